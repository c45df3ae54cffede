"""The model zoo: small model organisms trained by our own code, shipped in the repo.

Two kinds of entries:

* **organisms** — a :class:`~seqlens.models.train.Recipe` each (architecture, task or corpus,
  steps, seed) whose trained checkpoint ships in ``models/organisms/<name>/`` (``config.json``
  records the recipe, metrics, library version and training time). ``seqlens zoo build NAME``
  retrains one from its recipe; ``seqlens zoo list`` prints the table.
* **presets** — ``tiny-*``: seeded, *untrained* random models of each foundation architecture,
  for exercising interfaces without any files.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from .base import CONFIG_FILE, WEIGHTS_FILE, SeqModel
from .config import ModelConfig

if TYPE_CHECKING:  # recipes imports the trainer (and the tasks): loaded on first use only
    from .recipes import Organism

ORGANISM_DIR = Path(__file__).parent / "organisms"

PRESETS: dict[str, tuple[ModelConfig, str]] = {
    "tiny-transformer": (
        ModelConfig(arch="transformer", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_ctx=512,
                    positions="rotary", norm="rmsnorm", mlp="gated", act="silu"),
        "untrained 2-layer Llama-style transformer (rotary, RMSNorm, SwiGLU), byte vocabulary, seed 0"),
    "tiny-gpt2": (
        ModelConfig(arch="transformer", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_ctx=512,
                    positions="learned", norm="layernorm", act="gelu_new", attn_bias=True,
                    attn_out_bias=True, mlp_bias=True, tied_embeddings=True),
        "untrained 2-layer GPT-2-style transformer (learned positions, n_ctx 512), byte vocabulary, seed 0"),
    "tiny-fox": (
        ModelConfig(arch="fox", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_ctx=512,
                    positions="none", norm="rmsnorm", mlp="gated", act="silu"),
        "untrained 2-layer Forgetting Transformer (no positions), byte vocabulary, seed 0"),
    "tiny-mamba": (
        ModelConfig(arch="mamba", vocab_size=256, d_model=64, n_layers=2, n_ctx=512, norm="rmsnorm",
                    d_state=16, expand=2, n_groups=8),
        "untrained 2-layer Mamba-1, byte vocabulary, seed 0"),
}


def names() -> list[str]:
    """Every loadable zoo name: untrained presets and the organisms with a shipped checkpoint."""
    return sorted(PRESETS) + [n for n in sorted(organisms()) if is_built(n)]


def all_names() -> list[str]:
    """Presets and every organism recipe, built or not."""
    return sorted(PRESETS) + sorted(organisms())


def _check(name: str) -> str:
    if name not in PRESETS and name not in organisms():
        raise KeyError(f"name: unknown zoo model {name!r}; available: {all_names()}")
    return name


def describe(name: str) -> str:
    if _check(name) in PRESETS:
        return PRESETS[name][1]
    return organisms()[name].recipe.description


def checkpoint_dir(name: str) -> Path:
    return ORGANISM_DIR / name


def is_built(name: str) -> bool:
    d = checkpoint_dir(name)
    return (d / CONFIG_FILE).is_file() and (d / WEIGHTS_FILE).is_file()


def record(name: str) -> dict[str, Any]:
    """The shipped ``config.json`` of a built organism (recipe, metrics, train time, version)."""
    if not is_built(_check(name)):
        raise FileNotFoundError(f"name: organism {name!r} has no shipped checkpoint; build it with "
                                f"`seqlens zoo build {name}`")
    return json.loads((checkpoint_dir(name) / CONFIG_FILE).read_text())


def load(name: str, device: str | torch.device | None = None) -> SeqModel:
    from .registry import build
    from .io import load_dir

    if _check(name) in PRESETS:
        model = build(PRESETS[name][0], seed=0)
        model.tokenizer, model.name, model.recipe, model.metrics = None, name, None, {}
        return model.to(device) if device is not None else model
    record(name)  # clear error when not built
    return load_dir(checkpoint_dir(name), device=device)


ProbeFn = Callable[[SeqModel, int], float]
"""An analysis metric of a trained model, ``fn(model, seed) -> value`` (see seqlens.zoo_probes)."""
CHECKPOINTS_DIR = "checkpoints"


def build_organism(name: str, out_dir: str | Path | None = None, progress: bool = True,
                   resume: bool = True, force: bool = False,
                   probes: Mapping[str, tuple[ProbeFn, bool]] | None = None) -> dict[str, Any]:
    """Retrain organism ``name`` from its recipe into ``out_dir`` (default: the shipped folder),
    run its extra evaluations and return the recorded metrics. ``out_dir`` must be empty, new or
    this organism's own earlier output unless ``force`` (see :func:`~seqlens.models.train.train`).

    ``probes`` maps probe names to ``(fn, higher_is_better)``; it must cover the organism's
    ``probes`` (the analysis metrics live outside models/: the CLI passes
    ``seqlens.zoo_probes.PROBES``). They are measured at every evaluation (seed 0) and training
    stops once every ``stop_when`` target holds (from step ``stop_after`` on). A ``trajectory`` organism also saves the model at
    every evaluation in ``checkpoints/step-XXXXX/``."""
    from .train import evaluate, train, write_checkpoint

    if name in PRESETS:
        raise KeyError(f"name: {name!r} is a preset, not a trainable organism; organisms: {sorted(organisms())}")
    if name not in organisms():
        raise KeyError(f"name: unknown organism {name!r}; organisms: {sorted(organisms())}")
    org = organisms()[name]
    missing = sorted(set(org.probes) - set(probes or {}))
    if missing:
        raise ValueError(f"probes: organism {name!r} records the analysis metrics {missing}; pass their "
                         "functions (seqlens.zoo_probes.PROBES, as `seqlens zoo build` does)")
    out = Path(out_dir) if out_dir is not None else checkpoint_dir(name)
    on_eval = _on_eval(org, out, probes or {})
    result = train(org.recipe, out, resume=resume, progress=progress, force=force, on_eval=on_eval)
    metrics = dict(result.metrics)
    for label, overrides in org.extra_evals.items():
        metrics[label] = evaluate(result.model, org.recipe, overrides=overrides)[org.recipe.metric]
    write_checkpoint(out, result.model, org.recipe, metrics,
                     result.history, result.train_seconds, stopped_at=result.stopped_at)
    return metrics


def _on_eval(org: Organism, out: Path, probes: Mapping[str, tuple[ProbeFn, bool]]):
    """The training callback of ``org``: its probe metrics, its stop rule, its trajectory saves."""
    if not org.probes and not org.trajectory:
        return None

    def on_eval(model: SeqModel, step: int) -> tuple[dict[str, float], bool]:
        values = {p: float(probes[p][0](model, 0)) for p in org.probes}
        if org.trajectory:
            # the recipe too: loaded on its own, a checkpoint must know its task (BOS, data), or
            # the finders score other data than the final organism's (prefix 0.573 vs 0.624)
            model.save(out / CHECKPOINTS_DIR / f"step-{step:05d}", extra={
                "step": step, "organism": org.recipe.name, "recipe": org.recipe.to_dict(), "metrics": values})
        stop = bool(org.stop_when) and step >= org.stop_after and all(
            values[p] >= target if probes[p][1] else values[p] <= target for p, target in org.stop_when.items())
        return values, stop
    return on_eval


def trajectory(name: str) -> list[tuple[int, Path]]:
    """``(step, folder)`` of the checkpoints a trajectory organism saved along training, by step;
    each folder loads with ``seqlens.load(folder)``."""
    folder = checkpoint_dir(_check(name)) / CHECKPOINTS_DIR
    found = [(int(d.name.removeprefix("step-")), d) for d in folder.glob("step-*")
             if (d / CONFIG_FILE).is_file() and (d / WEIGHTS_FILE).is_file()] if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(f"name: organism {name!r} has no trajectory checkpoints in {folder}")
    return sorted(found)


def table() -> list[dict[str, Any]]:
    """One row per organism: name, arch, parameters, task, metric, value, train seconds."""
    from .registry import build

    rows = []
    for name, org in sorted(organisms().items()):
        cfg = org.recipe.model
        with torch.device("meta"):
            n_params = sum(p.numel() for p in build(cfg, seed=None).parameters())
        row = {"name": name, "arch": cfg.arch, "params": n_params, "task": org.task,
               "metric": org.recipe.metric, "value": None, "train_s": None, "built": is_built(name)}
        if row["built"]:
            rec = record(name)
            row["value"] = rec["metrics"].get(org.recipe.metric)
            row["extra"] = {k: rec["metrics"].get(k) for k in [*org.extra_evals, *org.probes]}
            row["train_s"] = rec.get("train_seconds")
        rows.append(row)
    return rows


@lru_cache(maxsize=1)
def organisms() -> dict[str, Organism]:
    """The organism recipes (defined in :mod:`seqlens.models.recipes`)."""
    from .recipes import ORGANISMS

    return ORGANISMS
