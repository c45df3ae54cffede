"""Hugging Face checkpoints as users have them (issue 19): RoPE scaling, sliding windows, Qwen2 /
Qwen3 / Gemma / Gemma 2, odd rotary sizes. Ground truth is transformers itself: every case is a
tiny random transformers model saved to a temporary directory and loaded by seqlens (no network);
logits agree within 1e-4 at lengths past ``max_position_embeddings`` (32) and past the window (8).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

transformers = pytest.importorskip("transformers")

from seqlens.circuits.token_heads import induction_scores  # noqa: E402
from seqlens.models.hf import from_hf  # noqa: E402
from seqlens.models.hookdoc import hook_table, spec_mismatches  # noqa: E402
from seqlens.models.hooks import list_hooks  # noqa: E402

TOL = 1e-4
V, N_CTX, WINDOW = 101, 32, 8
LENGTHS = [1, 9, 40]  # 9 > the window, 40 > max_position_embeddings and original_max_position_embeddings
BASE = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, initializer_range=0.2, max_position_embeddings=N_CTX)
T = transformers


def _rope(kind: str, **params: Any) -> dict:
    return dict(rope_parameters={"rope_type": kind, "rope_theta": 100.0, **params})


CASES: dict[str, tuple[type, type, dict]] = {
    "llama_linear": (T.LlamaForCausalLM, T.LlamaConfig, _rope("linear", factor=4.0)),
    "llama_dynamic": (T.LlamaForCausalLM, T.LlamaConfig, _rope("dynamic", factor=4.0)),
    "llama_llama3": (T.LlamaForCausalLM, T.LlamaConfig, _rope(
        "llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16)),
    "llama_yarn": (T.LlamaForCausalLM, T.LlamaConfig, _rope("yarn", factor=2.0, original_max_position_embeddings=16)),
    "llama_yarn_mscale": (T.LlamaForCausalLM, T.LlamaConfig, _rope(
        "yarn", factor=4.0, original_max_position_embeddings=16, mscale=1.0, mscale_all_dim=0.5, beta_fast=16.0)),
    "mistral_window": (T.MistralForCausalLM, T.MistralConfig, dict(sliding_window=WINDOW)),
    "qwen2": (T.Qwen2ForCausalLM, T.Qwen2Config, dict(use_sliding_window=True, sliding_window=WINDOW,
                                                       max_window_layers=1)),
    "qwen3": (T.Qwen3ForCausalLM, T.Qwen3Config, dict(head_dim=16)),
    "qwen3_window": (T.Qwen3ForCausalLM, T.Qwen3Config, dict(head_dim=16, use_sliding_window=True,
                                                               sliding_window=WINDOW, max_window_layers=1)),
    "gemma": (T.GemmaForCausalLM, T.GemmaConfig, dict(head_dim=16, num_key_value_heads=1)),
    "gemma2": (T.Gemma2ForCausalLM, T.Gemma2Config, dict(
        head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=24, attn_logit_softcapping=3.0,
        final_logit_softcapping=10.0)),
    # an odd rotary width (d_head 8 * 0.625 = 5): transformers rotates 6 features with 3 frequencies
    "neox_odd_rotary": (T.GPTNeoXForCausalLM, T.GPTNeoXConfig, dict(
        num_key_value_heads=None, rope_parameters={"rope_type": "default", "rope_theta": 100.0,
                                                   "partial_rotary_factor": 0.625})),
}
WINDOWED = ["mistral_window", "qwen2", "qwen3_window", "gemma2"]


def make_hf(name: str, seed: int = 0) -> torch.nn.Module:
    """A seeded random transformers model in eval mode; 1-d parameters (norms, biases) get noise so
    that a swapped norm or a dropped bias cannot pass by symmetry."""
    model_cls, config_cls, extra = CASES[name]
    kwargs = {k: v for k, v in {**BASE, **extra}.items() if v is not None}
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def tokens(length: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Callable[[str], Path]:
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = tmp_path_factory.mktemp(name)
            make_hf(name).save_pretrained(cache[name])
        return cache[name]

    return get


@pytest.fixture(scope="module")
def ours(saved) -> Callable[[str], torch.nn.Module]:
    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in cache:
            cache[name] = from_hf(saved(name))
        return cache[name]

    return get


# ----------------------------------------------------------------------------- logits


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(ours, name: str) -> None:
    model = ours(name)
    for length in LENGTHS:
        toks = tokens(length)
        hf = make_hf(name)  # fresh: dynamic RoPE caches its frequencies across calls in transformers
        with torch.no_grad():
            want = hf(toks, use_cache=False).logits
            got = model(toks)
        assert want.abs().max() > 1.0  # logits O(1): the tolerance is a real test
        assert (got - want).abs().max().item() < TOL, (name, length)


@pytest.mark.parametrize("name", [n for n in CASES if n != "llama_dynamic"])
def test_step_and_stream_equal_forward(ours, name: str) -> None:
    model, toks = ours(name), tokens(20)
    with torch.no_grad():
        full = model(toks)
        streamed = model.stream(toks, chunk_size=3).logits
        state, steps = model.init_state(2), []
        for t in range(toks.shape[1]):
            logits, state = model.step(toks[:, t], state)
            steps.append(logits)
    assert (streamed - full).abs().max().item() < TOL
    assert (torch.stack(steps, 1) - full).abs().max().item() < TOL


def test_dynamic_rope_stream_is_exact_within_the_context(ours) -> None:
    """Dynamic NTK rescales by the call's longest position (transformers does the same), so a
    stream equals forward only while no chunk runs past max_position_embeddings."""
    model, toks = ours("llama_dynamic"), tokens(N_CTX)
    with torch.no_grad():
        assert (model.stream(toks, chunk_size=5).logits - model(toks)).abs().max().item() < TOL
        long = tokens(N_CTX + 8)
        assert (model.stream(long, chunk_size=5).logits - model(long)).abs().max().item() > 1e-3


def test_scaled_rope_matters(ours) -> None:
    """The scaling is live: without it the logits past the original context differ."""
    model = ours("llama_llama3")
    plain = type(model)(model.cfg.replace(rope_scaling=None)).eval()
    plain.load_state_dict(model.state_dict())
    toks = tokens(40)
    with torch.no_grad():
        assert (plain(toks) - model(toks)).abs().max().item() > 1e-2


# ----------------------------------------------------------------------------- configs, windows


def test_converted_configs(ours) -> None:
    assert ours("llama_llama3").cfg.rope_scaling["rope_type"] == "llama3"
    assert ours("llama_yarn").cfg.rope_scaling["original_max_position_embeddings"] == 16
    qwen2 = ours("qwen2").cfg
    assert (qwen2.attn_bias, qwen2.attn_out_bias, qwen2.window(0), qwen2.window(1)) == (True, False, None, WINDOW)
    assert ours("qwen3").cfg.qk_norm
    gemma = ours("gemma").cfg
    assert (gemma.norm_offset, gemma.embed_scale, gemma.tied_embeddings, gemma.act) == (1.0, True, True, "gelu_new")
    gemma2 = ours("gemma2").cfg
    assert [gemma2.window(l) for l in range(2)] == [WINDOW, None]  # local, global, local, ...
    assert (gemma2.attn_softcap, gemma2.final_softcap, gemma2.sandwich_norms) == (3.0, 10.0, True)
    assert gemma2.attn_scale == pytest.approx(24 ** -0.5)
    assert ours("neox_odd_rotary").cfg.rot_dim == 5
    assert ours("mistral_window").cfg.window(1) == WINDOW


@pytest.mark.parametrize("name", WINDOWED)
def test_sliding_window_pattern(ours, name: str) -> None:
    """On sliding layers the pattern is zero outside the window and rows are distributions."""
    model = ours(name)
    toks = tokens(20)
    for layer, block in enumerate(model.blocks):
        window = block.mixer.window
        p = model.mixer_pattern(toks, layer)
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
        i, j = torch.arange(20)[:, None], torch.arange(20)[None, :]
        outside = (j > i) if window is None else (j > i) | (i - j >= window)
        assert p[..., outside].abs().max() == 0
        if window is not None:
            assert p[..., (i - j == window - 1)].min() > 0  # the oldest key in the window is read


@pytest.mark.parametrize("name", ["gemma2", "qwen2"])
def test_attention_stats_follow_the_window(ours, name: str) -> None:
    """attention_stats (no L×L matrix) agree with the pattern on sliding and soft-capped layers."""
    model, toks = ours(name), tokens(20)
    for layer in range(model.cfg.n_layers):
        p = model.mixer_pattern(toks, layer)
        stats = model.attention_stats(toks, layer)
        torch.testing.assert_close(stats.max_prob, p.amax(-1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stats.entropy, -torch.special.xlogy(p, p).sum(-1), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- hooks, analyses


@pytest.mark.parametrize("name", ["qwen3", "gemma2", "llama_yarn"])
def test_hooks_fire_as_listed(ours, name: str) -> None:
    model = ours(name)
    fired = dict(list_hooks(model, seq_len=6, batch=2))
    assert set(model.hook_dict) == {n for n, _ in hook_table(model.cfg)}
    assert set(fired) == set(model.hook_dict)
    assert spec_mismatches(model, fired, 2, 6, None) == []
    if name == "qwen3":
        assert list(fired["blocks.0.mixer.q_norm.hook_scale"]) == [2, 6, 4, 1]
    if name == "gemma2":
        assert {"blocks.1.ln1_post.hook_out", "blocks.1.ln2_post.hook_out"} <= set(fired)


@pytest.mark.parametrize("name", ["qwen3", "gemma2", "mistral_window"])
def test_head_finders_and_lrp_run(ours, name: str) -> None:
    from seqlens.circuits.lrp import attribute

    model = ours(name)
    scores = induction_scores(model, seq_len=24, batch=2, seed=0).scores
    assert scores.shape == (2, 4) and torch.isfinite(scores).all()
    result = attribute(model, tokens(10, batch=1))
    assert torch.isfinite(result.relevance).all() and result.relevance.abs().sum() > 0


# ----------------------------------------------------------------------------- errors


def test_yarn_without_original_context_is_refused(saved, tmp_path: Path) -> None:
    import shutil

    directory = Path(shutil.copytree(saved("llama_yarn"), tmp_path / "yarn"))
    config = json.loads((directory / "config.json").read_text())
    del config["rope_parameters"]["original_max_position_embeddings"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        from_hf(directory)


def test_unknown_model_type_names_the_bridge(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi3"}))
    with pytest.raises(NotImplementedError, match="model_type 'phi3' is not supported.*TransformerBridge"):
        from_hf(tmp_path)


@pytest.mark.parametrize("name", ["gemma2", "llama_llama3", "qwen3"])
def test_save_and_reload_as_seqlens_checkpoint(ours, name: str, tmp_path: Path) -> None:
    """The new config fields (rope_scaling dict, layer_types list, ...) survive config.json."""
    import seqlens

    model = ours(name)
    model.save(tmp_path / name)
    again = seqlens.load(str(tmp_path / name))
    assert again.cfg == model.cfg and hash(again.cfg) == hash(model.cfg)
    with torch.no_grad():
        assert torch.equal(again(tokens(12)), model(tokens(12)))


def test_v4_style_rope_scaling_config(saved, ours, tmp_path: Path) -> None:
    """Hub configs written by transformers 4.x (Llama 3.x) keep rope_theta at the top level and the
    scaling in ``rope_scaling``; they convert to the same model."""
    import shutil

    directory = Path(shutil.copytree(saved("llama_llama3"), tmp_path / "v4"))
    config = json.loads((directory / "config.json").read_text())
    params = config.pop("rope_parameters")
    config["rope_theta"] = params.pop("rope_theta")
    config["rope_scaling"] = {**params, "type": params.pop("rope_type")}  # the oldest spelling
    (directory / "config.json").write_text(json.dumps(config))
    assert from_hf(directory).cfg == ours("llama_llama3").cfg
