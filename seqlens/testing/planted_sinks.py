"""A hand-built two-layer attention-only transformer with planted attention sinks (ground truth for
seqlens.circuits.sinks).

Vocabulary: ``BOS = 0`` (always at position 0), ``DELIM = 1`` (at ``DELIM_POS``), ``KEY = 2``
(at ``KEY_POS``), filler tokens ``3 .. V−1``. Residual stream (d_model = V + 2): the one-hot token,
plus ``C_DELIM`` and ``C_KEY`` where layer 1's heads write what they copy. No position embeddings
(causal mask only). RMSNorm maps a one-hot x to ``√d · x``, so layer inputs are exact.

Every planted head has a constant query (it reads the sum of the token one-hots) and a key that
is ``LOGIT`` on one special token and 0 elsewhere: its queries put ``e^LOGIT / (e^LOGIT + i)`` on
that token (once they can see it) and spread the rest uniformly.

- L0H0 sink head: keys on BOS, so every query attends mostly to position 0; copies nothing.
- L0H1 ordinary: all-zero weights (uniform attention over the prefix); no sinks.
- L1H0 hidden-sink head: keys on DELIM (a sink at ``DELIM_POS > 0``); copies it into ``C_DELIM``,
  which the unembedding reads as the DELIM logit: it hurts the task, calibrating it helps.
- L1H1 key head: keys on KEY (another sink, at ``KEY_POS``); copies it into ``C_KEY`` = the KEY
  logit, which is the task's answer: calibrating it hurts.

Task (:func:`task_loss`): predict KEY at every position ``i ≥ KEY_POS`` (cross-entropy).
"""

from __future__ import annotations

import math

import torch

from seqlens.testing.planted import blank_model
from seqlens.circuits.task_metric import TaskMetric
from seqlens.models import ModelConfig

V, DH, T = 16, 8, 48
BOS, DELIM, KEY = 0, 1, 2
DELIM_POS, KEY_POS = 12, 24
C_DELIM, C_KEY = V, V + 1
D_MODEL = V + 2
LOGIT, UNEMBED = 7.0, 3.0
PLANTED = {"sink": (0, 0), "ordinary": (0, 1), "hidden": (1, 0), "key": (1, 1)}


def _plant(mixer, head: int, token: int, copy_to: int | None) -> None:
    """Head ``head`` of ``mixer``: constant query, key ``LOGIT`` on ``token``; when ``copy_to`` is
    set it copies ``token``'s indicator into residual dimension ``copy_to``."""
    row = head * DH
    mixer.q.weight[row, :V] = 1.0  # q = √d on every token
    mixer.k.weight[row, token] = LOGIT * math.sqrt(DH) / D_MODEL  # q·k/√DH = LOGIT
    if copy_to is not None:
        mixer.v.weight[row, token] = 1.0
        mixer.o.weight[copy_to, row] = 1.0


def planted_sink_model() -> torch.nn.Module:
    """The model described in the module docstring (2 layers × 2 heads of width 8)."""
    cfg = ModelConfig(arch="transformer", vocab_size=V, d_model=D_MODEL, n_layers=2, n_heads=2, d_head=DH,
                      n_ctx=T, positions="none", attn_only=True, norm="rmsnorm")
    model = blank_model(cfg)
    with torch.no_grad():
        model.embed.weight[torch.arange(V), torch.arange(V)] = 1.0
        _plant(model.blocks[0].mixer, 0, BOS, None)
        _plant(model.blocks[1].mixer, 0, DELIM, C_DELIM)
        _plant(model.blocks[1].mixer, 1, KEY, C_KEY)
        model.unembed.weight[DELIM, C_DELIM] = UNEMBED
        model.unembed.weight[KEY, C_KEY] = UNEMBED
    return model.eval()


def planted_tokens(batch: int = 4, seed: int = 0) -> torch.Tensor:
    """``[batch, T]``: BOS, filler tokens, DELIM at ``DELIM_POS``, KEY at ``KEY_POS``."""
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(3, V, (batch, T), generator=g)
    toks[:, 0], toks[:, DELIM_POS], toks[:, KEY_POS] = BOS, DELIM, KEY
    return toks


def task_loss(batch: int = 4) -> TaskMetric:
    """Cross-entropy of KEY at the positions ``i ≥ KEY_POS`` of :func:`planted_tokens` (lower is
    better)."""
    toks = planted_tokens(batch)

    def loss(model) -> float:
        logits = model(toks)[:, KEY_POS:].float()
        target = torch.full(logits.shape[:2], KEY)
        return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten()))

    return TaskMetric("planted:key_loss", loss, higher_is_better=False)
