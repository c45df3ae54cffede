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
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from seqlens.tasks import METRICS, evaluate, get_batch, masked_loss
# re-exports: the data side moved to seqlens.tasks; these names stay importable from the trainer
from seqlens.tasks import Batch, step_seed, task_vocab  # noqa: F401
from seqlens.validate import positive_int

from .base import CONFIG_FILE, WEIGHTS_FILE, SeqModel
from .config import ModelConfig, check_field_types

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
        check_field_types(self)  # every field's JSON type first: a recipe file is user input
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
        if not isinstance(d, dict) or "model" not in d:
            raise TypeError("Recipe: expected a JSON object of Recipe fields including 'model'")
        d = dict(d)
        d["model"] = ModelConfig.from_dict(d["model"])
        betas = d.get("betas", (0.9, 0.98))
        d["betas"] = tuple(betas) if isinstance(betas, list) else betas
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


# ----------------------------------------------------------------------------- output folder and resume files

RESUME_FILES = (WEIGHTS_FILE, "optimizer.safetensors", "progress.json")  # all a resume folder holds
RESUME_DIRS = (RESUME_DIR, RESUME_DIR + ".tmp", RESUME_DIR + ".old")  # the final one and its swap folders


def recipe_hash(recipe: Recipe) -> str:
    """A short fingerprint of every field of ``recipe`` (model included)."""
    text = json.dumps(recipe.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _json_or_none(path: Path) -> Any:
    try:
        if path.stat().st_size > 16 * 2**20:  # ours are a few kB; do not parse a huge foreign file
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, unreadable, binary or not JSON: not ours
        return None


def resume_hash(directory: Path) -> str | None:
    """The recipe hash recorded by an interrupted run in ``directory/resume`` ("" when the resume
    point records none), or None when there is no resume point."""
    if not (directory / RESUME_DIR / "progress.json").is_file():
        return None
    progress = _json_or_none(directory / RESUME_DIR / "progress.json")
    return str(progress.get("recipe_hash", "")) if isinstance(progress, dict) else ""


def is_own_folder(directory: Path, recipe: Recipe) -> bool:
    """Whether ``directory`` was written by a run of ``recipe``: its config.json records this
    recipe (a finished run) or its resume point does (an interrupted one)."""
    record = _json_or_none(directory / CONFIG_FILE)
    if isinstance(record, dict) and isinstance(record.get("recipe"), dict):
        try:
            if recipe_hash(Recipe.from_dict(record["recipe"])) == recipe_hash(recipe):
                return True
        except (TypeError, ValueError, KeyError):
            pass
    return resume_hash(directory) == recipe_hash(recipe)


def _check_resume_folders(directory: Path) -> None:
    """Refuse resume folders holding anything a run does not write: those files are the user's."""
    for name in RESUME_DIRS:
        sub = directory / name
        if sub.is_symlink() or sub.is_file():
            raise ValueError(f"out_dir: {sub} is not a folder written by seqlens; move it away first")
        if sub.is_dir():
            foreign = sorted(p.name for p in sub.iterdir() if p.name not in RESUME_FILES)
            if foreign:
                raise ValueError(f"out_dir: {sub} holds files seqlens did not write ({foreign[:5]}); "
                                 "move them away first, seqlens will not delete them")


def prepare_output(directory: Path, recipe: Recipe, resume: bool, force: bool) -> bool:
    """Check ``directory`` before any training: a folder (not a file), empty or this recipe's own
    (``force`` allows another non-empty folder; its config.json and model.safetensors are then
    overwritten), with no foreign resume files, writable. Returns whether to resume from it."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"out_dir: {directory} is a file; expected a folder")
    found = resume_hash(directory)
    if resume and found is not None and found != recipe_hash(recipe):
        raise ValueError(f"resume: the resume point in {directory / RESUME_DIR} belongs to another recipe "
                         f"(hash {found or 'not recorded'}, this recipe {recipe_hash(recipe)}); restart with "
                         "force (--restart --force) to discard it, or choose another folder")
    if directory.is_dir():
        if any(directory.iterdir()) and not force and not is_own_folder(directory, recipe):
            raise ValueError(f"out_dir: {directory} is not empty and was not written by a run of recipe "
                             f"{recipe.name!r}; choose an empty folder, or force (--force) to overwrite its "
                             f"{CONFIG_FILE} and {WEIGHTS_FILE}")
        _check_resume_folders(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise ValueError(f"out_dir: {directory} is not writable ({e.strerror or e})") from None
    return resume and found is not None


def _remove_resume_folder(path: Path) -> None:
    """Delete the files a resume point consists of, then the folder if that left it empty: never
    anything the run did not write."""
    for name in RESUME_FILES:
        (path / name).unlink(missing_ok=True)
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def _save_resume(directory: Path, model: SeqModel, opt: torch.optim.Optimizer, step: int,
                 history: list[dict], elapsed: float, recipe: Recipe) -> None:
    from safetensors.torch import save_file, save_model

    final, tmp, old = (directory / name for name in RESUME_DIRS)
    _remove_resume_folder(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    save_model(model, str(tmp / WEIGHTS_FILE))
    tensors = {f"{pid}.{key}": value.detach().clone()
               for pid, st in opt.state_dict()["state"].items() for key, value in st.items()}
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "progress.json").write_text(json.dumps({"step": step, "history": history, "elapsed_s": elapsed,
                                                   "recipe": recipe.name, "recipe_hash": recipe_hash(recipe)}))
    if final.exists():  # atomic switch: a crash mid-write leaves the previous resume point intact
        _remove_resume_folder(old)
        final.rename(old)
    tmp.rename(final)
    _remove_resume_folder(old)


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
    stopped_at: int | None = None  # the step an ``on_eval`` callback ended training at, if it did


OnEval = Callable[[SeqModel, int], tuple[dict[str, float], bool]]
"""``on_eval(model, step) -> (extra metrics, stop)``: called after each evaluation (model in eval
mode, no grad); the metrics join that history entry, ``stop=True`` ends training there."""


def train(recipe: Recipe, out_dir: str | os.PathLike | None = None, resume: bool = True,
          progress: bool = True, save_every: int | None = None, force: bool = False,
          on_eval: OnEval | None = None) -> TrainResult:
    """Train ``recipe``'s model; write the checkpoint to ``out_dir`` when given.

    Deterministic on CPU: weights come from ``build(cfg, seed)``, every batch from
    ``(seed, step)``. With ``resume=True`` an existing ``out_dir/resume`` of the same recipe
    continues the run (saved every ``save_every`` steps, default every evaluation); one of another
    recipe is an error. ``out_dir`` must be empty, new, or this recipe's own earlier output unless
    ``force``; it is checked (writable, not a file) before training starts. ``on_eval`` (see
    :data:`OnEval`) adds metrics to each evaluation and may stop training early (an analysis
    metric such as an induction score; a trajectory's checkpoints); the step it stopped at is
    recorded as ``stopped_at`` in config.json.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe: expected a Recipe, got {type(recipe).__name__}")
    from .sizing import check_model_size

    check_model_size(recipe.model, what="recipe.model")  # before any allocation
    check_batch_tokens(recipe)
    check_data(recipe)
    directory = Path(out_dir) if out_dir is not None else None
    do_resume = prepare_output(directory, recipe, resume, force) if directory is not None else False
    with torch.enable_grad():  # robust to a caller's no_grad / set_grad_enabled(False)
        return _train(recipe, directory, do_resume, progress, save_every, on_eval)


MAX_BATCH_TOKENS = 2**22  # tokens in one training / evaluation batch a recipe may ask for


def check_batch_tokens(recipe: Recipe) -> None:
    """Refuse a recipe whose batches (``batch_size`` × ``seq_len`` from its data kwargs) exceed
    :data:`MAX_BATCH_TOKENS`, before any data or model is allocated."""
    for split, kwargs in (("data_kwargs", recipe.data_kwargs), ("eval_kwargs", recipe.eval_kwargs)):
        length = kwargs.get("seq_len", 1)
        if isinstance(length, int) and recipe.batch_size * max(length, 1) > MAX_BATCH_TOKENS:
            raise ValueError(f"recipe.batch_size: {recipe.batch_size} sequences x seq_len {length} ({split}) "
                             f"= {recipe.batch_size * length:,} tokens per batch, above the limit of "
                             f"{MAX_BATCH_TOKENS:,}")


def check_data(recipe: Recipe) -> None:
    """Draw one training and one evaluation sequence before training starts, so a bad task name or
    argument fails at once, and require the data's token ids to fit the model's vocabulary."""
    for split in ("train", "eval"):
        tokens = get_batch(recipe.replace(batch_size=1), 0, split).tokens
        if int(tokens.max()) >= recipe.model.vocab_size:
            raise ValueError(f"recipe.model.vocab_size: {recipe.model.vocab_size} is too small for the "
                             f"{split} data, whose token ids reach {int(tokens.max())}")


def _train(recipe: Recipe, directory: Path | None, resume: bool, progress: bool,
           save_every: int | None, on_eval: OnEval | None = None) -> TrainResult:
    from tqdm.auto import tqdm

    from .registry import build

    torch.manual_seed(recipe.seed)
    model = build(recipe.model, seed=recipe.seed).train()
    opt = make_optimizer(model, recipe)
    start, history, elapsed = 0, [], 0.0
    if directory is not None and resume:
        start, history, elapsed = _load_resume(directory, model, opt)
    save_every = save_every or recipe.eval_every
    t0 = time.perf_counter() - elapsed
    bar = tqdm(range(start, recipe.steps), desc=recipe.name, disable=not progress, initial=start,
               total=recipe.steps)
    stopped_at = None
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
            if on_eval is not None and _call_on_eval(on_eval, model, done, history[-1]):
                stopped_at = done
                break
        if directory is not None and (done % save_every == 0) and done < recipe.steps:
            _save_resume(directory, model, opt, done, history, time.perf_counter() - t0, recipe)
    seconds = time.perf_counter() - t0
    model.eval()
    metrics = {k: v for k, v in history[-1].items() if k != "step"} if history else evaluate(model, recipe)
    if directory is not None:
        write_checkpoint(directory, model, recipe, metrics, history, seconds, stopped_at=stopped_at)
    return TrainResult(model, metrics, history, seconds, directory, stopped_at)


def _call_on_eval(on_eval: OnEval, model: SeqModel, step: int, entry: dict) -> bool:
    """Run the callback in eval mode without grad, merge its metrics into ``entry``; whether to stop."""
    model.eval()
    try:
        with torch.no_grad():
            extra, stop = on_eval(model, step)
    finally:
        model.train()
    entry.update(extra)
    return bool(stop)


def write_checkpoint(directory: Path, model: SeqModel, recipe: Recipe, metrics: dict[str, float],
                     history: list[dict], seconds: float, stopped_at: int | None = None) -> None:
    """Final files: weights, and config.json with config, recipe, seed, metrics and version (and
    ``stopped_at`` when an ``on_eval`` callback ended training before ``recipe.steps``)."""
    from seqlens.version import __version__

    extra = {"recipe": recipe.to_dict(), "seed": recipe.seed, "metrics": metrics, "history": history,
             "train_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
             "version": __version__}
    if stopped_at is not None:
        extra["stopped_at"] = stopped_at
    model.save(directory, extra=extra)
    _remove_resume_folder(directory / RESUME_DIR)  # only the files a resume point consists of
