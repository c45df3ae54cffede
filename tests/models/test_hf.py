"""Hugging Face conversion (`seqlens.models.hf`): logits equal transformers' own, errors are clear.

Every model here is a tiny random `transformers` model built from a config, saved to a temporary
directory and loaded back by seqlens; nothing touches the network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

import seqlens  # noqa: E402
from seqlens.models.hf import from_hf  # noqa: E402
from seqlens.models.io import CheckpointError  # noqa: E402

LENGTHS = [1, 7, 64, 130]  # 130 crosses the Mamba scan's chunk of 64
TOL = 1e-4
INIT = 0.2  # initializer_range large enough that logits are O(1), so TOL is a real test


def _gpt2(**kw: Any):
    cfg = dict(vocab_size=151, n_positions=256, n_embd=64, n_layer=2, n_head=4, initializer_range=INIT,
               bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**cfg, **kw}))


def _neox(parallel: bool):
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        rotary_pct=0.25, use_parallel_residual=parallel, max_position_embeddings=256, initializer_range=INIT))


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, rope_theta=500.0, tie_word_embeddings=False, initializer_range=INIT))


def _mistral():
    return transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        intermediate_size=96, sliding_window=None, tie_word_embeddings=True, initializer_range=INIT))


def _mamba():
    return transformers.MambaForCausalLM(transformers.MambaConfig(
        vocab_size=101, hidden_size=48, num_hidden_layers=2, state_size=12, time_step_rank=4))


FAMILIES: dict[str, Callable[[], torch.nn.Module]] = {
    "gpt2": _gpt2,
    "neox_parallel": lambda: _neox(parallel=True),
    "neox_sequential": lambda: _neox(parallel=False),
    "llama_gqa": _llama,
    "mistral": _mistral,
    "mamba": _mamba,
}


def make_hf(name: str, seed: int = 0) -> torch.nn.Module:
    """A seeded random HF model in eval mode; norms, biases, A_log and D get noise so that no
    mapping mistake (ln1 <-> ln2, a dropped bias) can pass by symmetry."""
    torch.manual_seed(seed)
    model = FAMILIES[name]().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1 or pname.endswith("A_log"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def hf_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens, use_cache=False).logits


def tokens(vocab: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Callable[[str], tuple[torch.nn.Module, Path]]:
    """``saved(name) -> (hf_model, directory)``, each family built and saved once per module."""
    cache: dict[str, tuple[torch.nn.Module, Path]] = {}

    def get(name: str) -> tuple[torch.nn.Module, Path]:
        if name not in cache:
            model = make_hf(name)
            directory = tmp_path_factory.mktemp(name)
            model.save_pretrained(directory)
            cache[name] = (model, directory)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def converted(saved) -> Callable[[str], tuple[torch.nn.Module, seqlens.SeqModel]]:
    """``converted(name) -> (hf_model, our model loaded with seqlens.load)``."""
    cache: dict[str, tuple[torch.nn.Module, seqlens.SeqModel]] = {}

    def get(name: str) -> tuple[torch.nn.Module, seqlens.SeqModel]:
        if name not in cache:
            hf, directory = saved(name)
            cache[name] = (hf, seqlens.load(str(directory)))
        return cache[name]

    return get


def copy_of(saved, name: str, tmp_path: Path) -> Path:
    """A private copy of a saved checkpoint that a test may damage."""
    return Path(shutil.copytree(saved(name)[1], tmp_path / name))


def edit_config(directory: Path, **changes: Any) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_transformers(converted, name: str, length: int) -> None:
    hf, ours = converted(name)
    toks = tokens(ours.cfg.vocab_size, length)
    ref = hf_logits(hf, toks)
    with torch.no_grad():
        out = ours(toks)
    assert out.shape == ref.shape
    assert ref.std() > 0.3, "logits too small for the tolerance to mean anything"
    assert (out - ref).abs().max().item() < TOL


@pytest.mark.parametrize("name", list(FAMILIES))
def test_stream_matches_transformers(converted, name: str) -> None:
    hf, ours = converted(name)
    toks = tokens(ours.cfg.vocab_size, 64, seed=2)
    out = ours.stream(toks, chunk_size=17).logits
    assert (out - hf_logits(hf, toks)).abs().max().item() < TOL


@pytest.mark.parametrize("name", list(FAMILIES))
def test_from_loaded_model(saved, name: str) -> None:
    hf, _ = saved(name)
    ours = from_hf(hf)
    toks = tokens(ours.cfg.vocab_size, 7, seed=3)
    with torch.no_grad():
        assert (ours(toks) - hf_logits(hf, toks)).abs().max().item() < TOL
    assert ours.cfg.meta["source"] == "hf"


def test_converted_configs(converted) -> None:
    gpt2 = converted("gpt2")[1].cfg
    assert (gpt2.n_ctx, gpt2.positions, gpt2.tied_embeddings, gpt2.act) == (256, "learned", True, "gelu_new")
    neox = converted("neox_parallel")[1].cfg
    assert (neox.rot_dim, neox.parallel_residual, neox.act) == (4, True, "gelu")
    assert not converted("neox_sequential")[1].cfg.parallel_residual
    llama = converted("llama_gqa")[1].cfg
    assert (llama.kv_heads, llama.rotary_base, llama.tied_embeddings, llama.mlp) == (2, 500.0, False, "gated")
    mamba = converted("mamba")[1].cfg
    assert (mamba.arch, mamba.d_inner, mamba.d_state) == ("mamba", 96, 12)
    assert (mamba.dt_rank_, mamba.n_groups, mamba.norm) == (4, 8, "rmsnorm")
    assert mamba.meta["model_type"] == "mamba" and mamba.meta["path"] is not None


def test_tied_weights_stay_tied_in_bfloat16(saved) -> None:
    ours = from_hf(saved("gpt2")[1], dtype=torch.bfloat16)
    assert ours.embed.weight.dtype == torch.bfloat16
    assert ours.unembed.weight is ours.embed.weight
    assert not ours.training


def test_sharded_checkpoint(saved, tmp_path: Path) -> None:
    hf, _ = saved("llama_gqa")
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    toks = tokens(101, 7)
    with torch.no_grad():
        assert (seqlens.load(str(tmp_path))(toks) - hf_logits(hf, toks)).abs().max().item() < TOL


def test_hub_gpt2_layout(saved, tmp_path: Path) -> None:
    """The hub's gpt2 weights were saved from the bare GPT2Model: no ``transformer.`` prefix, no
    ``lm_head``, and the causal-mask buffers ``attn.bias`` / ``attn.masked_bias`` stored too."""
    hf, _ = saved("gpt2")
    directory = copy_of(saved, "gpt2", tmp_path)
    state = {k.removeprefix("transformer."): v for k, v in load_file(directory / "model.safetensors").items()}
    for layer in range(2):
        state[f"h.{layer}.attn.bias"] = torch.ones(1, 1, 256, 256).tril()
        state[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    toks = tokens(151, 7)
    with torch.no_grad():
        assert (from_hf(directory)(toks) - hf_logits(hf, toks)).abs().max().item() < TOL


def test_v4_style_rope_configs(saved, tmp_path: Path) -> None:
    """Configs written by transformers 4.x keep RoPE settings at the top level."""
    neox = copy_of(saved, "neox_parallel", tmp_path)
    edit_config(neox, rope_parameters=None, rotary_pct=0.5, rotary_emb_base=1000)
    assert (from_hf(neox).cfg.rot_dim, from_hf(neox).cfg.rotary_base) == (8, 1000.0)
    llama = copy_of(saved, "llama_gqa", tmp_path)
    edit_config(llama, rope_parameters=None, rope_theta=20000.0, rope_scaling=None)
    assert from_hf(llama).cfg.rotary_base == 20000.0


# ----------------------------------------------------------------------------- errors


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="path_or_model: .* is not a directory"):
        from_hf(tmp_path / "nope")


def test_not_a_path_or_model() -> None:
    with pytest.raises(TypeError, match="path_or_model: expected a checkpoint directory"):
        from_hf(42)


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="has no config.json"):
        from_hf(tmp_path)


def test_unsupported_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(NotImplementedError, match=r"model_type 'bert' is not supported; supported: \['gpt2'"):
        seqlens.load(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no 'model_type'"):
        from_hf(tmp_path)


def test_refuses_pickled_weights(saved, tmp_path: Path) -> None:
    directory = copy_of(saved, "gpt2", tmp_path)
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"never read")
    with pytest.raises(CheckpointError, match="no safetensors weights.*never unpickles .bin files"):
        from_hf(directory)
    (directory / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        from_hf(directory)


def test_truncated_safetensors(saved, tmp_path: Path) -> None:
    directory = copy_of(saved, "llama_gqa", tmp_path)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        seqlens.load(str(directory))


def test_missing_shard(saved, tmp_path: Path) -> None:
    saved("llama_gqa")[0].save_pretrained(tmp_path, max_shard_size="40KB")
    next(tmp_path.glob("model-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="shard .* listed in .* is not a file"):
        from_hf(tmp_path)


@pytest.mark.parametrize("name, change, message", [
    ("llama_gqa", {"intermediate_size": 80},
     r"'model.layers.0.mlp.gate_proj.weight' has shape \[96, 64\] but config.json implies \[80, 64\]"),
    ("gpt2", {"n_embd": 32},
     r"'transformer.wte.weight' has shape \[151, 64\] but config.json implies \[151, 32\]"),
    ("mamba", {"state_size": 16}, r"'backbone.layers.0.mixer.x_proj.weight' has shape \[28, 96\]"),
])
def test_config_weight_shape_mismatch(saved, tmp_path: Path, name: str, change: dict, message: str) -> None:
    directory = copy_of(saved, name, tmp_path)
    edit_config(directory, **change)
    with pytest.raises(CheckpointError, match=message):
        from_hf(directory)


def test_missing_and_unexpected_weights(saved, tmp_path: Path) -> None:
    directory = copy_of(saved, "neox_parallel", tmp_path)
    path = directory / "model.safetensors"
    state = load_file(path)
    del state["gpt_neox.layers.1.mlp.dense_4h_to_h.bias"]
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing weight 'layers.1.mlp.dense_4h_to_h.bias'"):
        from_hf(directory)
    state["gpt_neox.layers.1.mlp.dense_4h_to_h.bias"] = torch.zeros(64)
    state["gpt_neox.layers.1.extra.weight"] = torch.zeros(3)
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"unexpected weights \['gpt_neox.layers.1.extra.weight'\]"):
        from_hf(directory)


def test_untied_checkpoint_without_head(saved, tmp_path: Path) -> None:
    directory = copy_of(saved, "llama_gqa", tmp_path)
    state = load_file(directory / "model.safetensors")
    del state["lm_head.weight"]
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing weight 'lm_head.weight'"):
        from_hf(directory)


@pytest.mark.parametrize("name, change, message", [
    ("llama_gqa", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
     "RoPE type 'linear'"),
    ("llama_gqa", {"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}}, "'dynamic'"),
    ("mistral", {"sliding_window": 4096}, "sliding_window=4096"),
    ("gpt2", {"activation_function": "gelu_fast"}, "activation_function='gelu_fast' is not supported"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
])
def test_unimplemented_variants(saved, tmp_path: Path, name: str, change: dict, message: str) -> None:
    directory = copy_of(saved, name, tmp_path)
    edit_config(directory, **change)
    with pytest.raises(NotImplementedError, match=message):
        from_hf(directory)


def test_sequence_longer_than_context(tmp_path: Path) -> None:
    torch.manual_seed(0)
    _gpt2(n_positions=32).save_pretrained(tmp_path)
    ours = seqlens.load(str(tmp_path))
    assert ours.cfg.n_ctx == 32
    ours(tokens(151, 32))
    with pytest.raises(ValueError, match="n_ctx=32"):
        ours(tokens(151, 33))


def test_bad_dtype(saved) -> None:
    with pytest.raises(TypeError, match="dtype: expected a floating-point torch.dtype"):
        from_hf(saved("gpt2")[1], dtype=torch.int64)
