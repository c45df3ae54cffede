"""A hand-built two-layer attention-only transformer with a planted retrieval (copy) head, the
ground truth for :func:`seqlens.circuits.retrieval.retrieval_scores`.

It reads the ``"tokens"`` needle format of ``needle_prompts`` for vocab V = 16: ``[BOS] hay…
[KEY] a_1..a_k hay… [KEY]`` with BOS = 0, KEY = 15, haystack tokens in [1, 8) and distinct answer
tokens in [8, 15). Residual stream (d_model = 3V + N): one-hot token ``TOK = [0, V)``, one-hot
learned position ``POS = [V, V+N)``, ``PREV = [V+N, 2V+N)`` (the previous token, written by L0H1)
and ``OUT = [2V+N, 3V+N)`` (read by the unembedding; only the copy head writes it).

- L0H0 duplicate-token head (distractor): attends to earlier copies of the current token; at the
  generated a_i it attends to a_i in the needle, in the span but ``x_{j*} ≠ w`` (w = a_{i+1}).
- L0H1 previous-token head (distractor): writes x_{i−1} into PREV.
- L1H0 marker head (distractor): attends to KEY tokens; its argmax is the needle's KEY, just
  outside the answer span.
- L1H1 retrieval head: q = current token, k = PREV (induction-style match, x_{j−1} = x_i), OV
  copies the attended token into OUT. At the final KEY it attends to a_1 (the token after the
  needle's KEY), at a generated a_i to a_{i+1}: it copies the whole answer from the needle.
"""

from __future__ import annotations

import torch

from seqlens.testing.planted import DH, N, SCALE, V, blank_model, plant_layer0
from seqlens.models import ModelConfig
KEY = V - 1
RETRIEVAL_HEAD = (1, 1)


def planted_retrieval_model(copy: bool = True) -> torch.nn.Module:
    """The model of the module docstring; ``copy=False`` zeroes the retrieval head's OV circuit (it
    still attends to the needle but writes nothing, so the model cannot answer)."""
    cfg = ModelConfig(arch="transformer", vocab_size=V, d_model=3 * V + N, n_layers=2, n_heads=2, d_head=DH,
                      n_ctx=N, positions="learned", attn_only=True, norm="rmsnorm")
    model = blank_model(cfg)
    TOK, POS, PREV, OUT = 0, V, V + N, 2 * V + N
    plant_layer0(model, TOK, POS, PREV)
    with torch.no_grad():
        model.unembed.weight[torch.arange(V), OUT + torch.arange(V)] = 1.0
        a1 = model.blocks[1].mixer
        a1.q.weight[0, TOK:TOK + V] = SCALE  # L1H0: every query matches KEY keys
        a1.k.weight[0, TOK + KEY] = SCALE
        for t in range(V):  # L1H1 matches x_i with PREV (x_{j-1}), copies to OUT
            a1.q.weight[DH + t, TOK + t] = SCALE
            a1.k.weight[DH + t, PREV + t] = SCALE
            a1.v.weight[DH + t, TOK + t] = 1.0
            a1.o.weight[OUT + t, DH + t] = 1.0 if copy else 0.0
    return model.eval()
