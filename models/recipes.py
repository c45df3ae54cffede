"""Recipes of the shipped model organisms (see :mod:`seqlens.models.zoo`).

Sizes are chosen so each organism trains in at most five minutes on two CPU cores; the MQAR set
uses matched parameter budgets (~100-130k parameters without embeddings, see ``seqlens zoo
list``) so the accuracy gap between architectures is a property of the mixer, not of size.
"""

from __future__ import annotations

from .config import ModelConfig
from .train import Recipe
from .zoo import Organism

LLAMA = dict(norm="rmsnorm", mlp="gated", act="silu", positions="rotary")
RECURRENT = dict(norm="rmsnorm", mlp="gated", act="silu")


def _mqar_models() -> dict[str, ModelConfig]:
    base = dict(vocab_size=128, d_model=64, n_ctx=128)
    return {
        "transformer": ModelConfig(arch="transformer", n_layers=2, n_heads=4, d_mlp=128, **LLAMA, **base),
        "mamba": ModelConfig(arch="mamba", n_layers=4, d_state=16, expand=2, norm="rmsnorm", **base),
        "gla": ModelConfig(arch="gla", n_layers=2, n_heads=4, d_key=64, d_value=64, d_mlp=128,
                           **RECURRENT, **base),
        "mingru": ModelConfig(arch="mingru", n_layers=2, d_hidden=128, pattern_heads=8, d_mlp=128,
                              **RECURRENT, **base),
        "lstm": ModelConfig(arch="lstm", n_layers=2, d_hidden=64, pattern_heads=8, d_mlp=128,
                            **RECURRENT, **base),
    }


def _organisms() -> dict[str, Organism]:
    orgs: dict[str, Organism] = {}
    orgs["induction-attn2"] = Organism(Recipe(
        name="induction-attn2", description="2-layer attention-only transformer on repeated random "
        "tokens (Olsson et al.); metric: in-context loss drop, 1st vs 2nd occurrence (nats)",
        model=ModelConfig(arch="transformer", vocab_size=64, d_model=64, n_layers=2, n_heads=4,
                          n_ctx=128, attn_only=True, norm="rmsnorm", positions="rotary"),
        data="task:induction", data_kwargs={"seq_len": 64, "vocab_size": 64},
        steps=400, batch_size=32, lr=3e-3, warmup=50, eval_every=100, metric="induction_loss_drop"), "induction")
    for arch, cfg in _mqar_models().items():
        orgs[f"mqar-{arch}"] = Organism(Recipe(
            name=f"mqar-{arch}", description=f"{arch} on multi-query associative recall (Zoology): 8 "
            "key-value pairs, vocab 128, length 64; metric: accuracy at the query positions",
            model=cfg, data="task:mqar", data_kwargs={"n_pairs": 8, "vocab_size": 128, "seq_len": 64},
            steps=2000, batch_size=32, lr=3e-3, warmup=100, metric="accuracy"), "mqar")
    return orgs


ORGANISMS = _organisms()
