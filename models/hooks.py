"""Hook listing and hook hygiene: which hooks a model fires (with shapes), and whether anything is
still attached to it.

``list_hooks`` is what ``seqlens hooks`` prints and what the dashboard's Model page shows: every
hook that fires on a seeded random input, in execution order, with its shape (recurrent models run
inside ``tap_states`` so ``hook_state`` fires too). ``attached_hooks`` names every place where a
forward / backward hook, a pre-hook or a state tap is still attached: an intervention that leaves
one behind leaks into every later forward of the model.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

HookShapes = list[tuple[str, list[int]]]


def supports_taps(model) -> bool:
    """True when every mixer has a fixed-size recurrent state that ``tap_states`` can tap."""
    return model.supports_state_taps


def random_tokens(model, batch: int, seq_len: int, seed: int) -> torch.Tensor:
    """Seeded uniform token ids ``[batch, seq_len]`` on the model's device."""
    for name, value in (("batch", batch), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.vocab_size, (batch, seq_len), generator=gen).to(model.device)


def record_hooks(model, tokens: torch.Tensor, taps: Sequence[int] | None = None) -> tuple[HookShapes, list[str]]:
    """``(fired, silent)``: ``(name, shape)`` of every hook that fired on ``tokens`` in execution
    order, and the hooks of the hook spec (:mod:`seqlens.models.hookdoc`) that did not fire. With
    ``taps``, runs inside ``tap_states`` so recurrent mixers' ``hook_state`` fires. A hook outside
    the spec or with another shape than the spec's is a ValueError (the spec is the reference)."""
    from .hookdoc import hook_table, spec_mismatches

    ctx = model.tap_states(list(taps)) if taps else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        _, cache = model.run_with_cache(tokens)
    fired = [(name, list(t.shape)) for name, t in cache.items()]
    seen = {name for name, _ in fired}
    wrong = spec_mismatches(model, dict(fired), tokens.shape[0], tokens.shape[1], len(taps) if taps else None)
    if wrong:
        raise ValueError("hooks disagree with the hook spec (docs/hooks.md): " + "; ".join(wrong))
    return fired, [name for name, _ in hook_table(model.cfg) if name not in seen]


def default_taps(model, seq_len: int) -> list[int] | None:
    """The tap positions ``list_hooks`` uses by default: the last position on recurrent models,
    None on models without a fixed-size state."""
    return [seq_len - 1] if supports_taps(model) else None


def list_hooks(model, seq_len: int = 8, batch: int = 1, seed: int = 0,
               taps: Sequence[int] | None | str = "last") -> HookShapes:
    """``(name, shape)`` of every hook that fires on a seeded random input ``[batch, seq_len]``,
    in execution order. ``taps``: positions for ``hook_state`` (``"last"``: the last position on
    recurrent models, none otherwise; None: no taps)."""
    tokens = random_tokens(model, batch, seq_len, seed)
    if isinstance(taps, str):
        if taps != "last":
            raise ValueError(f"taps: expected 'last', None or a list of positions, got {taps!r}")
        taps = default_taps(model, seq_len)
    return record_hooks(model, tokens, taps)[0]


def attached_hooks(model) -> list[str]:
    """Where anything is still attached to ``model``: ``"<module>: <kind>"`` for every torch
    forward / pre / backward hook (TransformerLens hooks are torch hooks on hook points), every
    mixer with state taps set, and an open ``model.hooks()`` context. Empty for a clean model."""
    out = []
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    for name, module in model.named_modules():
        out += [f"{name or '<model>'}: {k.strip('_')}" for k in kinds if getattr(module, k, None)]
        if getattr(module, "tap_positions", None) is not None:
            out.append(f"{name}: tap_positions")
    if getattr(model, "context_level", 0):
        out.append(f"<model>: hooks() context level {model.context_level}")
    return out
