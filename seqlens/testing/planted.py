"""A hand-built two-layer attention-only transformer with planted heads (ground truth for the
head finders).

Residual stream (d_model = 2V + N): one-hot token ``TOK = [0, V)``, one-hot learned position
``POS = [V, V+N)``, and ``PREV = [V+N, 2V+N)`` where layer 0's previous-token head writes the
previous token. RMSNorm only rescales these (near) constant-norm vectors.

- L0H0 duplicate-token head: logit ∝ 1[x_i = x_j] − 1[i = j] (token match, self suppressed); no output.
- L0H1 previous-token head: q = e(i), k = e(j+1) from positions; copies token x_{i−1} into PREV.
- L1H0 all-zero weights (uniform attention), a distractor.
- L1H1 induction head: q = current token, k = PREV token (x_{j−1}): attends to j with x_{j−1} = x_i.
"""

from __future__ import annotations

import torch

from seqlens.models import ModelConfig, build

V, N, DH, SCALE = 16, 32, 64, 3.0
PLANTED = {"duplicate_token": (0, 0), "previous_token": (0, 1), "induction": (1, 1)}


def blank_model(cfg: ModelConfig) -> torch.nn.Module:
    """``build(cfg)`` with every weight zero and every norm weight one (nothing happens until planted)."""
    model = build(cfg, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for b in model.blocks:
            b.ln1.weight.fill_(1.0)
        model.ln_final.weight.fill_(1.0)
    return model


@torch.no_grad()
def plant_layer0(model, TOK: int, POS: int, PREV: int) -> None:
    """One-hot token (``TOK``) and position (``POS``) embeddings; layer 0's duplicate-token head
    (H0) and previous-token head (H1, which writes ``x_{i−1}`` into ``PREV``)."""
    model.embed.weight[torch.arange(V), TOK + torch.arange(V)] = 1.0
    model.pos_embed.weight[torch.arange(N), POS + torch.arange(N)] = 1.0
    a0 = model.blocks[0].mixer
    for t in range(V):  # L0H0: token match ...
        a0.q.weight[t, TOK + t] = SCALE
        a0.k.weight[t, TOK + t] = SCALE
    for p in range(N):  # ... minus self match
        a0.q.weight[V + p, POS + p] = SCALE
        a0.k.weight[V + p, POS + p] = -SCALE
    for p in range(N):  # L0H1: query position p matches key position p - 1
        a0.q.weight[DH + p, POS + p] = SCALE
        if p + 1 < N:
            a0.k.weight[DH + p + 1, POS + p] = SCALE
    for t in range(V):  # L0H1 copies the attended token into PREV
        a0.v.weight[DH + t, TOK + t] = 1.0
        a0.o.weight[PREV + t, DH + t] = 1.0


def planted_model() -> torch.nn.Module:
    """The model described in the module docstring (vocab V=16, context N=32, 2 heads of 64)."""
    cfg = ModelConfig(arch="transformer", vocab_size=V, d_model=2 * V + N, n_layers=2, n_heads=2, d_head=DH,
                      n_ctx=N, positions="learned", attn_only=True, norm="rmsnorm")
    model = blank_model(cfg)
    TOK, POS, PREV = 0, V, V + N
    plant_layer0(model, TOK, POS, PREV)
    with torch.no_grad():
        a1 = model.blocks[1].mixer
        for t in range(V):  # L1H1 matches x_i with PREV (x_{j-1})
            a1.q.weight[DH + t, TOK + t] = SCALE
            a1.k.weight[DH + t, PREV + t] = SCALE
    return model.eval()
