"""Train model organisms from a `Recipe`: AdamW, linear warm-up + cosine decay, gradient clipping,
periodic evaluation, tqdm progress, resumable, deterministic on CPU given the seed.

A recipe names a model config, a data source (a synthetic task from :mod:`seqlens.tasks` or the
standard-library text corpus from :mod:`seqlens.corpus`) and an evaluation metric. ``train``
writes ``model.safetensors`` + ``config.json`` (``{"seqlens": cfg, "recipe": ..., "seed": ...,
"metrics": ..., "version": ...}``) — the same format ``seqlens.load`` opens — and, while running,
a ``resume/`` folder (model + optimizer state as safetensors, step counter as JSON) so an
interrupted run continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from seqlens.tasks import METRICS, evaluate, get_batch, masked_loss
# re-exports: the data side moved to seqlens.tasks; these names stay importable from the trainer
from seqlens.tasks import Batch, step_seed, task_vocab  # noqa: F401
from seqlens.validate import positive_int

from .base import WEIGHTS_FILE, SeqModel
from .config import ModelConfig

RESUME_DIR = "resume"


@dataclass(frozen=True)
class Recipe:
    """Everything needed to reproduce one trained model.

    ``train_on="all"`` trains on every next-token target, as a language model would (evaluation
    always uses the task's ``loss_mask``): the first half of the induction task is then calibrated,
    so its loss drop is Olsson et al.'s in-context score rather than an artefact of untrained
    positions.

    ``data`` is ``"task:<name>"`` (kwargs in ``data_kwargs``, passed to
    :func:`seqlens.tasks.make_task` with ``batch`` and ``seed`` added) or ``"corpus:stdlib"``
    (``data_kwargs["seq_len"]``). ``metric`` names an entry of :data:`METRICS`.
    """

    name: str
    model: ModelConfig
    data: str
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 4
    eval_kwargs: dict[str, Any] = field(default_factory=dict)  # overrides data_kwargs at evaluation
    metric: str = "accuracy"
    train_on: str = "mask"  # "mask": the task's loss_mask; "all": every next-token target (LM loss)
    seed: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelConfig):
            raise TypeError(f"Recipe.model: expected a ModelConfig, got {type(self.model).__name__}")
        if not (self.data.startswith("task:") or self.data == "corpus:stdlib"):
            raise ValueError(f"Recipe.data: expected 'task:<name>' or 'corpus:stdlib', got {self.data!r}")
        for name in ("steps", "batch_size", "eval_every", "eval_batches"):
            positive_int(f"Recipe.{name}", getattr(self, name))
        if self.train_on not in ("mask", "all"):
            raise ValueError(f"Recipe.train_on: expected 'mask' or 'all', got {self.train_on!r}")
        if self.metric not in METRICS:
            raise ValueError(f"Recipe.metric: unknown metric {self.metric!r}; known: {sorted(METRICS)}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        d = dict(d)
        d["model"] = ModelConfig.from_dict(d["model"])
        d["betas"] = tuple(d.get("betas", (0.9, 0.98)))
        return cls(**d)

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- optimisation


def lr_at(recipe: Recipe, step: int) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine)


def make_optimizer(model: SeqModel, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases, embeddings' 1-d params)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas)


# ----------------------------------------------------------------------------- resume files


def _save_resume(directory: Path, model: SeqModel, opt: torch.optim.Optimizer, step: int,
                 history: list[dict], elapsed: float) -> None:
    from safetensors.torch import save_file, save_model

    tmp = directory / (RESUME_DIR + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_model(model, str(tmp / WEIGHTS_FILE))
    tensors = {f"{pid}.{key}": value.detach().clone()
               for pid, st in opt.state_dict()["state"].items() for key, value in st.items()}
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "progress.json").write_text(json.dumps({"step": step, "history": history, "elapsed_s": elapsed}))
    final = directory / RESUME_DIR
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)  # atomic switch: a crash mid-write leaves the previous resume point intact


def _load_resume(directory: Path, model: SeqModel, opt: torch.optim.Optimizer) -> tuple[int, list, float]:
    from safetensors.torch import load_file, load_model

    res = directory / RESUME_DIR
    load_model(model, str(res / WEIGHTS_FILE))
    tensors = load_file(str(res / "optimizer.safetensors"))
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)
    progress = json.loads((res / "progress.json").read_text())
    return progress["step"], progress["history"], progress["elapsed_s"]


# ----------------------------------------------------------------------------- training loop


@dataclass
class TrainResult:
    model: SeqModel
    metrics: dict[str, float]
    history: list[dict]
    train_seconds: float
    directory: Path | None


def train(recipe: Recipe, out_dir: str | os.PathLike | None = None, resume: bool = True,
          progress: bool = True, save_every: int | None = None) -> TrainResult:
    """Train ``recipe``'s model; write the checkpoint to ``out_dir`` when given.

    Deterministic on CPU: weights come from ``build(cfg, seed)``, every batch from
    ``(seed, step)``. With ``resume=True`` an existing ``out_dir/resume`` continues the run
    (saved every ``save_every`` steps, default every evaluation).
    """
    with torch.enable_grad():  # robust to a caller's no_grad / set_grad_enabled(False)
        return _train(recipe, out_dir, resume, progress, save_every)


def _train(recipe: Recipe, out_dir: str | os.PathLike | None, resume: bool, progress: bool,
           save_every: int | None) -> TrainResult:
    from tqdm.auto import tqdm

    from .registry import build

    torch.manual_seed(recipe.seed)
    model = build(recipe.model, seed=recipe.seed).train()
    opt = make_optimizer(model, recipe)
    directory = Path(out_dir) if out_dir is not None else None
    start, history, elapsed = 0, [], 0.0
    if directory is not None and resume and (directory / RESUME_DIR / "progress.json").is_file():
        start, history, elapsed = _load_resume(directory, model, opt)
    save_every = save_every or recipe.eval_every
    t0 = time.perf_counter() - elapsed
    bar = tqdm(range(start, recipe.steps), desc=recipe.name, disable=not progress, initial=start,
               total=recipe.steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(recipe, step)
        batch = get_batch(recipe, step)
        loss = masked_loss(model(batch.tokens), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if done % recipe.eval_every == 0 or done == recipe.steps:
            history.append({"step": done, "train_loss": loss.item(), **evaluate(model, recipe)})
            bar.set_postfix(loss=f"{loss.item():.3f}", **{recipe.metric: f"{history[-1][recipe.metric]:.3f}"})
        if directory is not None and (done % save_every == 0) and done < recipe.steps:
            _save_resume(directory, model, opt, done, history, time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    model.eval()
    metrics = {k: v for k, v in history[-1].items() if k != "step"} if history else evaluate(model, recipe)
    if directory is not None:
        write_checkpoint(directory, model, recipe, metrics, history, seconds)
    return TrainResult(model, metrics, history, seconds, directory)


def write_checkpoint(directory: Path, model: SeqModel, recipe: Recipe, metrics: dict[str, float],
                     history: list[dict], seconds: float) -> None:
    """Final files: weights, and config.json with config, recipe, seed, metrics and version."""
    from seqlens.version import __version__

    model.save(directory, extra={
        "recipe": recipe.to_dict(), "seed": recipe.seed, "metrics": metrics, "history": history,
        "train_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
        "version": __version__})
    if (directory / RESUME_DIR).exists():
        shutil.rmtree(directory / RESUME_DIR)
