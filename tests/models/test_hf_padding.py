"""Padding (issue 19): ``forward(tokens, attention_mask=...)`` on a batch of different lengths
computes every row's real tokens as the row alone does, with left or right padding; recurrent
models (Mamba-2 included) take left padding exactly through their ``pad_write_hooks``; a mixer
without them refuses left padding clearly; ``to_tokens`` builds the batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seqlens.models import ModelConfig, build
from seqlens.testing.tiny import CONFIGS, V, make

TOL = 1e-4
LENGTHS = (11, 4, 7)


def rows(seed: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, V, (n,), generator=g) for n in LENGTHS]


def padded(seqs: list[torch.Tensor], side: str, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(s) for s in seqs)
    toks = torch.full((len(seqs), L), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for r, s in enumerate(seqs):
        cols = slice(L - len(s), L) if side == "left" else slice(0, len(s))
        toks[r, cols], mask[r, cols] = s, 1
    return toks, mask


def assert_rows_match(model, side: str) -> None:
    seqs = rows()
    toks, mask = padded(seqs, side, pad=5)  # a real token id as pad: only the mask may hide it
    with torch.no_grad():
        batched = model(toks, attention_mask=mask)
        for r, s in enumerate(seqs):
            alone = model(s[None])[0]
            got = batched[r][mask[r].bool()]
            assert (got - alone).abs().max().item() < TOL, (side, r)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", ["gpt2", "llama", "neox", "fox", "attn_only"])
def test_attention_models_pad_exactly(name: str, side: str) -> None:
    assert_rows_match(make(name), side)


@pytest.mark.parametrize("side", ["left", "right"])
def test_windowed_softcapped_model_pads_exactly(side: str) -> None:
    """Sliding windows (counted over real tokens), soft-capping, sandwich norms and scaled RoPE."""
    cfg = CONFIGS["llama"].replace(
        sliding_window=3, layer_types=["sliding_attention", "full_attention"], attn_softcap=2.0,
        final_softcap=5.0, sandwich_norms=True, norm_offset=1.0, embed_scale=True, qk_norm=True, n_ctx=8,
        rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4})
    assert_rows_match(build(cfg, seed=0), side)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", ["mamba", "gla", "retnet", "mingru", "minlstm", "lstm"])
def test_recurrent_models_pad_exactly(name: str, side: str) -> None:
    assert_rows_match(make(name), side)


@pytest.mark.parametrize("name", ["mamba", "mamba2", "gla", "lstm"])
def test_left_pads_leave_the_state_untouched(name: str) -> None:
    """The state tapped at a row's last pad is the zero initial state; at its first token it is not."""
    model = make(name)
    toks, mask = padded(rows(), "left")  # row 1: 7 pads, then 4 tokens
    seen = []
    with model.tap_states([6, 7]):
        model.run_with_hooks(toks, attention_mask=mask,
                             fwd_hooks=[("blocks.1.mixer.hook_state", lambda s, hook: seen.append(s.clone()))])
    state = seen[0][1]  # row 1, [T=2, ...]
    assert state[0].abs().max() == 0 and state[1].abs().max() > 0


def final_states(model, toks: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Every layer's state after the last position, ``[B, ...]`` per layer."""
    names = [f"blocks.{i}.mixer.hook_state" for i in range(model.cfg.n_layers)]
    seen = {}
    with torch.no_grad(), model.tap_states([toks.shape[1] - 1]):
        model.run_with_hooks(toks, attention_mask=mask, fwd_hooks=[
            (n, lambda s, hook: seen.__setitem__(hook.name, s[:, 0].clone())) for n in names])
    return [seen[n] for n in names]


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("side", ["left", "right"])
def test_mamba2_pads_exactly(groups: int, side: str) -> None:
    """Mamba-2 with one and two B/C groups: logits at the real positions and, with left padding,
    every layer's final state equal each prompt's run alone (pads zero the pre-conv xBC and Δ)."""
    from seqlens.testing.tiny import randomize

    model = randomize(build(CONFIGS["mamba2"].replace(n_bc_groups=groups), seed=groups), groups)
    assert_rows_match(model, side)
    if side == "left":
        seqs = rows()
        toks, mask = padded(seqs, side, pad=5)
        batched = final_states(model, toks, mask)
        for r, s in enumerate(seqs):
            for b, a in zip(batched, final_states(model, s[None])):
                assert (b[r] - a[0]).abs().max().item() < TOL
                assert a[0].abs().max() > 0


def test_mamba2_left_pads_get_no_implicit_attention() -> None:
    """α rebuilt from the hooks of a left-padded run (Δ = 0 at pads) is zero on pad keys, and its
    real block equals the prompt's own implicit attention (mixer_pattern alone)."""
    from seqlens.models.mamba2 import ssd_attention_matrix

    model = make("mamba2")
    seqs = rows()
    toks, mask = padded(seqs, "left", pad=5)
    names = [f"blocks.1.mixer.hook_{n}" for n in ("delta", "B", "C")]
    _, cache = model.run_with_cache(toks, attention_mask=mask, names_filter=names)
    alpha = ssd_attention_matrix(*(cache[n] for n in names[:1]), model.blocks[1].mixer.A,
                                 *(cache[n] for n in names[1:]))  # [B, H, L, L]
    for r, s in enumerate(seqs):
        real = mask[r].bool()
        assert bool((alpha[r][..., ~real] == 0).all())  # row 0 has no pads: vacuous there
        alone = model.mixer_pattern(s[None], 1)[0]
        assert (alpha[r][:, real][..., real] - alone).abs().max().item() < TOL


def test_mixers_without_padding_support_refuse_left_padding(monkeypatch) -> None:
    from seqlens.models.mamba import MambaMixer

    monkeypatch.setattr(MambaMixer, "pad_write_hooks", ())
    toks, mask = padded(rows(), "left")
    with pytest.raises(NotImplementedError, match="attention_mask: left padding is not implemented for "
                                                  r"\['MambaMixer'\].*padding_side='right'"):
        make("mamba")(toks, attention_mask=mask)
    assert_rows_match(make("mamba"), "right")  # right padding needs nothing


def test_hooks_see_masked_pads() -> None:
    """On a left-padded row the pattern gives pad keys no weight."""
    model = make("llama")
    toks, mask = padded(rows(), "left")
    _, cache = model.run_with_cache(toks, attention_mask=mask, names_filter="blocks.0.mixer.hook_pattern")
    p = cache["blocks.0.mixer.hook_pattern"]  # [B, H, L, L]
    real = mask.bool()
    weight_on_pads = (p * (~real)[:, None, None, :]).sum(-1)  # [B, H, L]
    assert weight_on_pads[real[:, None, :].expand_as(weight_on_pads)].abs().max() == 0
    torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))


@pytest.mark.parametrize("bad, message", [
    (torch.ones(3, 5, dtype=torch.long), r"expected shape \[3, 11\]"),
    (torch.full((3, 11), 0.5), "entries 0 \\(padding\\) and 1"),
    (torch.tensor([[1] * 11, [1, 0] * 5 + [1], [1] * 11]), "one contiguous run"),
    (torch.tensor([[1] * 11, [0] * 11, [1] * 11]), "at least one real token"),
    ([[1] * 11] * 3, "expected a tensor"),
])
def test_bad_masks(bad, message: str) -> None:
    toks, _ = padded(rows(), "right")
    with pytest.raises((ValueError, TypeError), match="attention_mask: .*" + message):
        make("llama")(toks, attention_mask=bad)


def test_to_tokens_pads_either_side() -> None:
    model = build(ModelConfig(arch="transformer", vocab_size=256, d_model=32, n_layers=1, n_heads=4), seed=0)
    texts = ["hello there", "hi", "abcdef"]
    for side in ("left", "right"):
        batch = model.to_tokens(texts, padding_side=side)
        assert batch.tokens.shape == (3, 11) and batch.attention_mask.sum(1).tolist() == [11, 2, 6]
        row = batch.tokens[1][batch.attention_mask[1].bool()]
        assert bytes(row.tolist()) == b"hi"
        assert batch.attention_mask[1, -1 if side == "left" else 0] == 1
        with torch.no_grad():
            out = model(batch.tokens, attention_mask=batch.attention_mask)
            alone = model(torch.tensor([list(b"hi")]))[0]
        assert (out[1][batch.attention_mask[1].bool()] - alone).abs().max() < TOL
    with pytest.raises(ValueError, match="padding_side: expected 'left' or 'right'"):
        model.to_tokens(texts, padding_side="middle")
    with pytest.raises(ValueError, match="texts: text 1 encodes to no tokens"):
        model.to_tokens(["a", ""])


def test_hf_checkpoint_left_padding_matches_transformers(tmp_path: Path) -> None:
    """A converted Gemma 2 (windows, soft-caps) batched with left padding equals transformers
    run on each prompt alone."""
    transformers = pytest.importorskip("transformers")
    from seqlens.models.hf import from_hf

    torch.manual_seed(0)
    hf = transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=48, sliding_window=4, query_pre_attn_scalar=8,
        attn_logit_softcapping=3.0, final_logit_softcapping=10.0, initializer_range=0.2)).eval()
    hf.save_pretrained(tmp_path)
    ours = from_hf(tmp_path)
    seqs = rows()
    toks, mask = padded(seqs, "left")
    with torch.no_grad():
        batched = ours(toks, attention_mask=mask)
        for r, s in enumerate(seqs):
            want = hf(s[None], use_cache=False).logits[0]
            assert (batched[r][mask[r].bool()] - want).abs().max().item() < TOL
