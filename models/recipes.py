"""Recipes of the shipped model organisms (see :mod:`seqlens.models.zoo`).

Sizes are chosen so each organism trains in at most five minutes on two CPU cores; the MQAR set
uses matched parameter budgets (~100-130k parameters without embeddings, see ``seqlens zoo
list``) so the accuracy gap between architectures is a property of the mixer, not of size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import ModelConfig
from .train import Recipe

LLAMA = dict(norm="rmsnorm", mlp="gated", act="silu", positions="rotary")
RECURRENT = dict(norm="rmsnorm", mlp="gated", act="silu")


@dataclass(frozen=True)
class Organism:
    """A zoo organism: its recipe plus extra evaluations recorded beside the main metric
    (``extra_evals``: label -> data-kwarg overrides, e.g. copying at twice the train length)."""

    recipe: Recipe
    task: str
    extra_evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    # analysis metrics (names in seqlens.zoo_probes.PROBES) measured at every evaluation and recorded
    probes: tuple[str, ...] = ()
    # probe name -> target: training stops at the first evaluation where every target holds
    stop_when: dict[str, float] = field(default_factory=dict)
    # the stop rule applies from this step on: a curriculum's warm-up must not end training before
    # the model has seen its final data (the targets must hold for the model trained on the final task)
    stop_after: int = 0
    trajectory: bool = False  # save a checkpoint at every evaluation (checkpoints/step-XXXXX/)


def _mqar_models() -> dict[str, ModelConfig]:
    base = dict(vocab_size=128, d_model=64, n_ctx=128)
    return {
        "transformer": ModelConfig(arch="transformer", n_layers=2, n_heads=4, d_mlp=128, **LLAMA, **base),
        "mamba": ModelConfig(arch="mamba", n_layers=4, d_state=16, expand=2, norm="rmsnorm", **base),
        # Mamba-2: 8 heads of 16 channels, one B/C group (~113k parameters without embeddings)
        "mamba2": ModelConfig(arch="mamba2", n_layers=4, d_state=16, expand=2, n_heads=8, n_bc_groups=1,
                              norm="rmsnorm", **base),
        "gla": ModelConfig(arch="gla", n_layers=2, n_heads=4, d_key=64, d_value=64, d_mlp=128,
                           **RECURRENT, **base),
        "mingru": ModelConfig(arch="mingru", n_layers=2, d_hidden=128, n_groups=8, d_mlp=128,
                              **RECURRENT, **base),
        "lstm": ModelConfig(arch="lstm", n_layers=2, d_hidden=64, n_groups=8, d_mlp=128,
                            **RECURRENT, **base),
    }


# induction-attn2 as a trajectory organism (issue #16, the phase change): a checkpoint and the
# prefix score at every evaluation. Evaluation does not touch the training data or weights, so the
# weights at step 600 are those of the v1 organism (eval_every 100, no checkpoints) up to float
# rounding (retrained with 1 thread instead of 2: max |difference| 9e-7, metrics equal to 3 decimals)
INDUCTION_EVAL_EVERY, INDUCTION_PROBES, INDUCTION_TRAJECTORY = 50, ("induction_prefix",), True


def _organisms() -> dict[str, Organism]:
    orgs: dict[str, Organism] = {}
    orgs["induction-attn2"] = Organism(Recipe(
        name="induction-attn2", description="2-layer attention-only transformer on repeated random "
        "tokens (Olsson et al.); metric: in-context loss drop, 1st vs 2nd occurrence (nats)",
        model=ModelConfig(arch="transformer", vocab_size=64, d_model=64, n_layers=2, n_heads=4,
                          n_ctx=128, attn_only=True, norm="rmsnorm", positions="rotary"),
        data="task:induction", data_kwargs={"seq_len": 128, "vocab_size": 64, "min_prefix": 8},
        steps=600, batch_size=32, lr=3e-3, warmup=50, eval_every=INDUCTION_EVAL_EVERY,
        metric="induction_loss_drop",
        # LM loss everywhere: the 1st-occurrence loss is calibrated (ln 63). Per-row periods
        # (min_prefix): with one fixed period the rotary heads learned "attend to i − 31", not induction
        train_on="all"), "induction", probes=INDUCTION_PROBES, trajectory=INDUCTION_TRAJECTORY)
    for arch, cfg in _mqar_models().items():
        if arch in MQAR_CURRICULUM_ARCHS:
            orgs[f"mqar-{arch}"] = _mqar_curriculum(f"mqar-{arch}", cfg, f"{arch}")
            continue
        orgs[f"mqar-{arch}"] = Organism(Recipe(
            name=f"mqar-{arch}", description=f"{arch} on multi-query associative recall (Zoology): 8 "
            "key-value pairs, vocab 128, length 64; metric: accuracy at the query positions",
            model=cfg, data="task:mqar", data_kwargs=MQAR,
            steps=1500 if arch == "mamba" else 2000, batch_size=32, lr=3e-3, warmup=100,
            metric="accuracy"), "mqar")
    orgs.update(_mqar_state_organisms())
    orgs.update(_copy_organisms())
    orgs.update(_text_organisms())
    orgs.update(_probe_organisms())
    return orgs


MQAR = {"n_pairs": 8, "vocab_size": 128, "seq_len": 64}
# Zoo v2 (issue #16): fewer pairs first. Without it mqar-transformer sat at 0.21 after 2000 steps:
# the lookup is learned on 2 pairs, then carried to 4 and to the final 8 (evaluation always 8)
MQAR_CURRICULUM = [{"until": 500, "n_pairs": 2}, {"until": 1200, "n_pairs": 4}]
MQAR_CURRICULUM_ARCHS = ("transformer",)  # the others keep their v1 recipe until retrained
MQAR_STATES = (4, 8, 16)  # Mamba d_state N; GLA d_key per head (state N x 16 per head)


def _mqar_curriculum(name: str, cfg: ModelConfig, what: str, steps: int = 3000) -> Organism:
    return Organism(Recipe(
        name=name, description=f"{what} on multi-query associative recall (Zoology): 8 key-value pairs, "
        "vocab 128, length 64, curriculum 2 -> 4 -> 8 pairs; metric: accuracy at the query positions",
        model=cfg, data="task:mqar", data_kwargs={**MQAR, "curriculum": MQAR_CURRICULUM}, steps=steps,
        batch_size=32, lr=3e-3, warmup=100, eval_every=250, metric="accuracy"), "mqar")


def _mqar_state_organisms() -> dict[str, Organism]:
    """Mamba and GLA at three state sizes each (Zoology's accuracy vs state size figure)."""
    base = dict(vocab_size=128, d_model=64, n_ctx=128)
    orgs = {}
    for n in MQAR_STATES:
        mamba = ModelConfig(arch="mamba", n_layers=4, d_state=n, expand=2, norm="rmsnorm", **base)
        gla = ModelConfig(arch="gla", n_layers=2, n_heads=4, d_key=4 * n, d_value=64, d_mlp=128, **RECURRENT,
                          **base)
        orgs[f"mqar-mamba-n{n}"] = _mqar_curriculum(f"mqar-mamba-n{n}", mamba, f"Mamba (d_state {n})")
        orgs[f"mqar-gla-n{n}"] = _mqar_curriculum(f"mqar-gla-n{n}", gla, f"GLA (d_key {n} per head)")
    return orgs


COPY = {"min_len": 5, "max_len": 20, "alphabet": 10}


def _copy_organisms() -> dict[str, Organism]:
    """Copying (Jelassi et al. 2024) at train lengths 5-20 (the paper's 8-50 does not fit the CPU
    budget); recorded string accuracy at train lengths and at exactly 2x the longest (40)."""
    models = {
        "transformer": ModelConfig(arch="transformer", vocab_size=14, d_model=64, n_layers=2, n_heads=4,
                                   d_mlp=128, n_ctx=128, **LLAMA),
        "mamba": ModelConfig(arch="mamba", vocab_size=14, d_model=64, n_layers=4, d_state=16, norm="rmsnorm"),
    }
    return {f"copy-{arch}": Organism(Recipe(
        name=f"copy-{arch}", description=f"{arch} copying `$ s | s .` (alphabet 10, |s| 5-20); "
        "metric: exact string accuracy", model=cfg, data="task:copying", data_kwargs=COPY,
        steps=1500, batch_size=32, lr=3e-3, warmup=100, eval_every=250, eval_batches=16,
        metric="sequence_accuracy"),  # 512 strings: 4 batches put copy-mamba at 0.82, 16 at 0.72
        "copying", extra_evals={"sequence_accuracy_2x": {"min_len": 40, "max_len": 40}})
        for arch, cfg in models.items()}


def _text_models(n_ctx: int) -> dict[str, ModelConfig]:
    """Byte-level text models, one per architecture (~0.4-0.8M parameters); the Transformer has two
    layers (the minimum for induction heads; v1 had four) to fit the CPU budget."""
    base = dict(vocab_size=256, d_model=128, n_ctx=n_ctx)
    return {
        "transformer": ModelConfig(arch="transformer", n_layers=2, n_heads=4, d_mlp=256, **LLAMA,
                                   **base),
        "fox": ModelConfig(arch="fox", n_layers=4, n_heads=4, d_mlp=256, positions="none", **RECURRENT, **base),
        "mamba": ModelConfig(arch="mamba", n_layers=4, d_state=16, norm="rmsnorm", **base),
        "gla": ModelConfig(arch="gla", n_layers=4, n_heads=4, d_mlp=256, **RECURRENT, **base),
        # the paper's xPos rotation of q, k: without it 3.20 bits/byte after 300 steps vs 2.82 with it
        # (text-gla 2.75; docs/architectures.md "RetNet against the paper", issue #16)
        "retnet": ModelConfig(arch="retnet", n_layers=4, n_heads=4, d_mlp=256, positions="rotary", **RECURRENT,
                              **base),
        "mingru": ModelConfig(arch="mingru", n_layers=4, d_hidden=192, n_groups=8, d_mlp=256,
                              **RECURRENT, **base),
        "minlstm": ModelConfig(arch="minlstm", n_layers=4, d_hidden=192, n_groups=8, d_mlp=256,
                               **RECURRENT, **base),
        "lstm": ModelConfig(arch="lstm", n_layers=3, d_hidden=128, n_groups=8, d_mlp=256,
                            **RECURRENT, **base),
    }


# Zoo v2 text data (issue #16): windows of 256 bytes, 90 % of them with a planted repeated span
# (16-128 bytes copied from earlier in the window; half of those spans random bytes), so in-context
# copying pays. Evaluation (bits/byte) is on plain validation text, comparable with v1.
TEXT_V2 = {"seq_len": 256, "repeat_share": 0.9, "repeat_min": 16, "repeat_max": 128, "repeat_random": 0.5}
TEXT_V2_EVAL = {"repeat_share": 0.0}
# the Transformer's warm-up is the induction task itself (random bytes, per-row periods 8-128, as
# induction-attn2), then the text mix. Three runs with text-only data formed no heads (prefix score
# 0.013-0.015): the mix alone (batch 8, 1600 steps); an 800-step warm-up of windows with a 64-128-byte
# random repeat (batch 8); a 1000-step warm-up with 32-128-byte random repeats (batch 16, stopped at
# step 800). The same model on the induction task (batch 32 x 128) reached 0.38 at step 400 and 0.73
# at 500 (docs/zoo.md)
TEXT_INDUCTION_WARMUP = [{"until": 700, "data": "task:induction", "seq_len": 256, "vocab_size": 256,
                          "min_prefix": 8}]
# every text organism is v2 (the v1 recipes, 128-byte plain windows, are in git history); only the
# Transformer starts with the induction-task warm-up. The same warm-up was tried on FoX (batch 8,
# 2400 steps), Mamba and minGRU (2000 steps): none learned the induction task (prefix score <= 0.012,
# repeat surprisal 100 %) and each ended worse on text (FoX 1.920 vs 1.583 bits/byte, Mamba 1.777,
# minGRU 2.403; docs/zoo.md), so they train on the text mix alone
TEXT_WARMUP_ARCHS = ("transformer",)  # the warm-up and the stop rule's induction target
# steps per text organism, sized to the issue's ~20 minutes on 2 CPU cores
TEXT_V2_STEPS = {"transformer": 2000, "fox": 2400, "mamba": 1500, "gla": 2000, "retnet": 2000,
                 "mingru": 1500, "minlstm": 1500, "lstm": 1500}
# targets of the text Transformer (issue #16): induction heads and verbatim memory; a margin over
# the 0.3 so a fresh measurement passes too
TEXT_STOP = {"induction_prefix": 0.4, "repeat_surprisal": 50.0}
TEXT_STOP_AFTER = 1200  # 500 steps of the final text mix after the warm-up before the stop rule applies
TEXT_V2_BATCH = {"transformer": 16}  # the others: 8


def _text_organisms() -> dict[str, Organism]:
    """Byte-level LMs on the standard-library corpus; metric: validation bits/byte (plain text)."""
    orgs = {}
    for arch, cfg in _text_models(256).items():
        warm = arch in TEXT_WARMUP_ARCHS
        recipe = Recipe(
            name=f"text-{arch}", description=f"byte-level {arch} LM on the Python standard library "
            "source, 256-byte windows, 90 % with a repeated span (zoo v2); metric: validation bits "
            "per byte on plain text", model=cfg, data="corpus:stdlib",
            data_kwargs={**TEXT_V2, "curriculum": TEXT_INDUCTION_WARMUP} if warm else TEXT_V2,
            eval_kwargs=TEXT_V2_EVAL, steps=TEXT_V2_STEPS[arch], batch_size=TEXT_V2_BATCH.get(arch, 8), lr=3e-3,
            warmup=100, eval_every=200, eval_batches=8, metric="bits_per_byte")
        orgs[f"text-{arch}"] = Organism(recipe, "stdlib text", probes=("induction_prefix", "repeat_surprisal"),
                                        stop_when=TEXT_STOP if warm else {},
                                        stop_after=TEXT_STOP_AFTER if warm else 0)
    return orgs


# the standard 226-byte prompt kept a small Mamba on its ln(10) plateau for the whole CPU budget;
# with the compact prompt at length 64 both state sizes reach 1.0 by step 1250 (at length 128
# d_state 16 was still at 0.33 after 1500 steps, past the time budget)
PASSKEY = {"seq_len": 64, "depth": None, "key_len": 5, "style": "compact"}


# Stuffed Mamba (issue #16): four state sizes at two training lengths, so the capacity fit has four
# points per length; at 128 a larger budget (d_state 16 was at 0.33 after 1500 steps at 128, v1)
PASSKEY_STATES = (2, 4, 8, 16)
PASSKEY_LENGTHS = {64: 1500, 128: 3000}  # training length -> steps


def _passkey(name: str, model: ModelConfig, what: str, seq_len: int, steps: int) -> Organism:
    return Organism(Recipe(
        name=name, description=f"{what} on byte-level passkey retrieval, compact prompt (' key K.' in "
        f"filler, then ' key K'), length {seq_len}, random depth; metric: accuracy on the 5 key digits",
        model=model, data="task:passkey", data_kwargs={**PASSKEY, "seq_len": seq_len}, steps=steps,
        batch_size=16, lr=3e-3, warmup=100, eval_every=250, metric="accuracy"), "passkey",
        extra_evals={"accuracy_4x": {"seq_len": 4 * seq_len}})


# FoX on passkey: 1500 steps gave 0.259 and 3000 gave 0.863 (it leaves the ln 10 plateau slowly and
# the cosine schedule had decayed by then); with 6000 it is at 1.0 from step 3000 on (docs/zoo.md)
FOX_PASSKEY_STEPS = 6000


def _passkey_organisms() -> dict[str, Organism]:
    """Passkey Mambas (state size x training length; the length-64 ones keep their v1 names) and a
    FoX and a Transformer on the same data (FoX's length extrapolation claims)."""
    orgs = {}
    for seq_len, steps in PASSKEY_LENGTHS.items():
        for n in PASSKEY_STATES:
            name = f"passkey-mamba-n{n}" + ("" if seq_len == 64 else f"-t{seq_len}")
            model = ModelConfig(arch="mamba", vocab_size=256, d_model=64, n_layers=3, d_state=n, norm="rmsnorm")
            orgs[name] = _passkey(name, model, f"Mamba (d_state {n})", seq_len, steps)
    attention = dict(vocab_size=256, d_model=64, n_layers=3, n_heads=4, d_mlp=128, n_ctx=1024)
    # not "passkey-*": the States page fits capacity across the passkey-* organisms (Mamba state sizes)
    orgs["transformer-passkey"] = _passkey("transformer-passkey", ModelConfig(
        arch="transformer", **attention, **LLAMA), "Transformer (rotary)", 64, 1500)
    orgs["fox-passkey"] = _passkey("fox-passkey", ModelConfig(
        arch="fox", **attention, positions="none", **RECURRENT), "FoX (no positions)", 64, FOX_PASSKEY_STEPS)
    return orgs


def _probe_organisms() -> dict[str, Organism]:
    orgs = _passkey_organisms()
    orgs["successor-transformer"] = Organism(Recipe(
        name="successor-transformer", description="transformer on ordinal sequences (numbers, weekdays, "
        "months, letters, ...) in templates; metric: accuracy on the successor's tokens",
        model=ModelConfig(arch="transformer", vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_mlp=256,
                          n_ctx=128, **LLAMA),
        data="task:successor", steps=1500, batch_size=32, lr=3e-3, warmup=100, eval_every=250,
        metric="accuracy"), "successor")
    # in-context language learning (Akyurek et al. 2024) on the same data and budget for a Transformer and
    # three recurrent architectures, so the n-gram-head comparison has recurrent organisms (85-126k
    # parameters)
    base = dict(vocab_size=20, d_model=64, n_ctx=256)
    icll_models = {
        "transformer": ModelConfig(arch="transformer", n_layers=2, n_heads=4, d_mlp=128, **LLAMA, **base),
        "mamba": ModelConfig(arch="mamba", n_layers=3, d_state=16, expand=2, norm="rmsnorm", **base),
        "gla": ModelConfig(arch="gla", n_layers=2, n_heads=4, d_key=64, d_value=64, d_mlp=128, **RECURRENT,
                           **base),
        "lstm": ModelConfig(arch="lstm", n_layers=2, d_hidden=64, n_groups=8, d_mlp=128, **RECURRENT, **base),
    }
    for arch, cfg in icll_models.items():
        orgs[f"icll-{arch}"] = Organism(Recipe(
            name=f"icll-{arch}", description=f"{arch} on in-context language learning (random DFAs, "
            "vocab 20, <= 12 states); metric: fraction of next-symbol predictions legal under the DFA",
            model=cfg, data="task:icll", data_kwargs={"seq_len": 256}, steps=1000, batch_size=16, lr=3e-3,
            warmup=100, eval_every=250, metric="legal_next_accuracy"), "icll")
    return orgs


ORGANISMS = _organisms()
