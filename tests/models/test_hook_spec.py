"""The machine-readable hook spec (``HOOKS`` of every module class, seqlens.models.hookdoc) is the
truth: on a tiny model of every architecture the hooks that fire, names and shapes, are exactly
the spec's; docs/hooks.md is generated from it and up to date; TransformerLens' names resolve on
attention models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformer_lens.utilities import get_act_name

from seqlens.models.hookdoc import expected_shapes, hook_table, markdown
from seqlens.testing.tiny import CONFIGS, make, tokens

DOCS = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"


def fired(model, B: int, L: int, taps: list[int] | None) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of every hook that fires on one forward (inside tap_states with ``taps``)."""
    seen: dict[str, tuple[int, ...]] = {}
    def record(x, hook) -> None:  # observe only (return None)
        seen.setdefault(hook.name, tuple(x.shape))

    hooks = [(name, record) for name in model.hook_dict]
    toks = tokens(B, L)
    if taps is None:
        model.run_with_hooks(toks, fwd_hooks=hooks)
    else:
        with model.tap_states(taps):
            model.run_with_hooks(toks, fwd_hooks=hooks)
    return seen


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fired_hooks_equal_the_spec(name):
    model, cfg = make(name), CONFIGS[name]
    taps = [1, 4] if model.supports_state_taps else None
    got = fired(model, 2, 6, taps)
    assert got == expected_shapes(cfg, 2, 6, None if taps is None else len(taps))
    # every hook point the model has is declared, and nothing else
    assert set(model.hook_dict) == {n for n, _ in hook_table(cfg)}
    # execution order follows the table (hook_state fires inside the mixer, before hook_out)
    assert list(got) == [n for n in (n for n, _ in hook_table(cfg)) if n in got]


def test_docs_hooks_md_is_up_to_date():
    assert DOCS.read_text() == markdown(), "regenerate: python -m seqlens.models.hookdoc > docs/hooks.md"


# ----------------------------------------------------------------------------- TransformerLens names


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_transformer_lens_names_resolve_on_attention_models(name):
    model = make(name)
    toks = tokens(2, 7)
    _, cache = model.run_with_cache(toks)
    pairs = {"blocks.1.attn.hook_pattern": "blocks.1.mixer.hook_pattern",
             "blocks.0.attn.hook_z": "blocks.0.mixer.hook_z", "blocks.0.attn.hook_q": "blocks.0.mixer.hook_q",
             "blocks.0.attn.hook_k": "blocks.0.mixer.hook_k", "blocks.0.attn.hook_v": "blocks.0.mixer.hook_v",
             "blocks.0.attn.hook_attn_scores": "blocks.0.mixer.hook_attn_scores",
             "blocks.1.hook_attn_out": "blocks.1.mixer.hook_out", "blocks.1.hook_mlp_out": "blocks.1.mlp.hook_out",
             get_act_name("pattern", 0): "blocks.0.mixer.hook_pattern",
             get_act_name("attn_out", 0): "blocks.0.mixer.hook_out",
             get_act_name("mlp_out", 1): "blocks.1.mlp.hook_out",
             get_act_name("normalized", 1, "ln2"): "blocks.1.ln2.hook_normalized"}
    for alias, primary in pairs.items():
        assert model.resolve_hook_name(alias) == primary
        assert torch.equal(cache[alias], cache[primary]) and alias in cache
    assert torch.equal(cache["pattern", 1], cache["blocks.1.mixer.hook_pattern"])
    assert torch.equal(cache["z", -1], cache["blocks.1.mixer.hook_z"])
    # names_filter: a list of TL names, and a predicate written for TL names
    _, small = model.run_with_cache(toks, names_filter=["blocks.0.attn.hook_pattern", "blocks.1.hook_mlp_out"])
    assert set(small.keys()) == {"blocks.0.mixer.hook_pattern", "blocks.1.mlp.hook_out"}
    _, pred = model.run_with_cache(toks, names_filter=lambda n: n.endswith("attn.hook_z"))
    assert set(pred.keys()) == {"blocks.0.mixer.hook_z", "blocks.1.mixer.hook_z"}
    torch.testing.assert_close(small["blocks.0.attn.hook_pattern"], cache["blocks.0.mixer.hook_pattern"])
    # run_with_hooks: an edit through a TL name takes effect, like the primary name
    zero = lambda z, hook: torch.zeros_like(z)  # noqa: E731
    via_alias = model.run_with_hooks(toks, fwd_hooks=[("blocks.1.attn.hook_z", zero)])
    via_primary = model.run_with_hooks(toks, fwd_hooks=[("blocks.1.mixer.hook_z", zero)])
    assert torch.equal(via_alias, via_primary) and not torch.allclose(via_alias, model(toks))
    seen = []
    model.run_with_hooks(toks, fwd_hooks=[(lambda n: n == "blocks.0.hook_attn_out", lambda x, hook: seen.append(hook.name))])
    assert seen == ["blocks.0.mixer.hook_out"]


def test_attention_names_do_not_resolve_on_recurrent_mixers():
    model = make("mamba")
    assert model.resolve_hook_name("blocks.0.attn.hook_pattern") == "blocks.0.attn.hook_pattern"
    assert model.resolve_hook_name("blocks.0.hook_attn_out") == "blocks.0.hook_attn_out"
