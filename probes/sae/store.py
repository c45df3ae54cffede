"""Activations to train SAEs on: ``harvest`` runs a model and keeps one hook's activations in an
``ActivationStore`` — in memory, or on disk as safetensors shards plus a JSON index for
activations that do not fit in memory.

Rows are activation vectors ``[N, d_in]``; each row remembers where it came from
(``locations [N, 2]``: sequence index, position) so feature pages can show contexts.
``...mixer.hook_state`` is read inside ``model.tap_states(positions)`` (the recurrent state right
after each position, SeqModel's read-out tap) and flattened to vectors; ``vector_shape`` records
its layout. The store also records SAELens' ``expected_average_only_in`` scaling factor
``sqrt(d_in) / E‖x‖`` (Anthropic's April 2024 update), which :func:`~.train.train_sae` uses when
asked to normalise.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from seqlens.progress import Progress, progress_bar
from seqlens.probes.sae.files import atomic_write as _atomic_write

INDEX_FILE = "index.json"
FORMAT = "seqlens-activation-store/1"


class _Stop(Exception):
    """Raised from the last hook a harvest needs: the rest of the forward pass is not run."""


@dataclass
class ActivationStore:
    """Activation rows in shards. ``shards``: in-memory ``(acts [n, d_in], locations [n, 2])``
    pairs, or None for an on-disk store (``directory`` with ``index.json`` and shard files).
    ``info``: how the rows were made (hook, model name, positions, state shape, ...)."""

    d_in: int
    shard_rows: list[int]
    info: dict[str, Any] = field(default_factory=dict)
    shards: list[tuple[Tensor, Tensor]] | None = None
    directory: Path | None = None
    _cache: tuple[int, tuple[Tensor, Tensor]] | None = field(default=None, repr=False)

    # -- access --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(self.shard_rows)

    @property
    def n_shards(self) -> int:
        return len(self.shard_rows)

    def shard(self, i: int) -> tuple[Tensor, Tensor]:
        """``(acts, locations)`` of shard ``i`` (on-disk shards are read once and cached)."""
        if not 0 <= i < self.n_shards:
            raise IndexError(f"shard: expected an index in [0, {self.n_shards}), got {i}")
        if self.shards is not None:
            return self.shards[i]
        if self._cache is None or self._cache[0] != i:
            from seqlens.probes.sae.io import read_weights

            t = read_weights(self.directory / self.info["shards"][i])
            self._check_shard(i, t)
            self._cache = (i, (t["acts"], t["locations"]))
        return self._cache[1]

    def _check_shard(self, i: int, t: dict[str, Tensor]) -> None:
        name = self.info["shards"][i]
        acts, loc = t.get("acts"), t.get("locations")
        if acts is None or loc is None:
            raise ValueError(f"{name}: expected tensors 'acts' and 'locations', got {sorted(t)}")
        if tuple(acts.shape) != (self.shard_rows[i], self.d_in) or tuple(loc.shape) != (self.shard_rows[i], 2):
            raise ValueError(f"{name}: acts {list(acts.shape)} / locations {list(loc.shape)} do not match the "
                             f"index ({self.shard_rows[i]} rows of d_in={self.d_in})")

    def iter_shards(self) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(self.n_shards):
            yield self.shard(i)

    def to_tensor(self) -> Tensor:
        """All rows ``[N, d_in]`` in one tensor (for stores that fit in memory)."""
        parts = [a for a, _ in self.iter_shards()]
        return torch.cat(parts) if parts else torch.zeros(0, self.d_in)

    def locations(self) -> Tensor:
        """``[N, 2]``: (sequence index, position) of every row."""
        parts = [loc for _, loc in self.iter_shards()]
        return torch.cat(parts) if parts else torch.zeros(0, 2, dtype=torch.long)

    def rows(self, index: Tensor) -> Tensor:
        """Rows at global indices ``index`` (any order), read shard by shard."""
        index = torch.as_tensor(index, dtype=torch.long)
        out = torch.empty(len(index), self.d_in, dtype=self._dtype())
        starts = torch.tensor([0] + self.shard_rows).cumsum(0)
        which = torch.bucketize(index, starts[1:], right=True)
        for s in which.unique().tolist():
            sel = which == s
            out[sel] = self.shard(s)[0][index[sel] - starts[s]].to(out.dtype)
        return out

    def _dtype(self) -> torch.dtype:
        return getattr(torch, self.info.get("dtype", "float32"))

    @property
    def scaling_factor(self) -> float:
        """SAELens' ``expected_average_only_in`` factor ``sqrt(d_in) / E‖x‖`` over the stored rows."""
        if "scaling_factor" not in self.info:
            total, n = 0.0, 0
            for acts, _ in self.iter_shards():
                total += float(acts.float().norm(dim=-1).sum())
                n += acts.shape[0]
            self.info["scaling_factor"] = math.sqrt(self.d_in) / (total / n) if total > 0 else 1.0
        return float(self.info["scaling_factor"])

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_tensor(cls, X: Tensor, locations: Tensor | None = None, **info: Any) -> "ActivationStore":
        """An in-memory store of ``X [N, d_in]``."""
        if not isinstance(X, Tensor) or X.dim() != 2 or X.shape[0] == 0 or not X.is_floating_point():
            raise ValueError(f"X: expected a non-empty floating-point tensor [N, d_in], got "
                             f"{list(X.shape) if isinstance(X, Tensor) else type(X).__name__}")
        if locations is None:
            locations = torch.stack([torch.arange(X.shape[0]), torch.zeros(X.shape[0], dtype=torch.long)], 1)
        info = {"dtype": str(X.dtype).removeprefix("torch."), **info}
        return cls(d_in=X.shape[1], shard_rows=[X.shape[0]], info=info, shards=[(X, locations.long())])

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "ActivationStore":
        """An on-disk store written by :func:`harvest` (``out=directory``)."""
        d = Path(directory)
        path = d / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"directory: {str(d)!r} has no {INDEX_FILE} (not an activation store, or "
                                    "its harvest did not finish)")
        try:
            info = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise ValueError(f"{path}: expected an index with format {FORMAT!r}")
        names, rows = info.get("shards"), info.get("shard_rows")
        if not isinstance(names, list) or not isinstance(rows, list) or len(names) != len(rows):
            raise ValueError(f"{path}: 'shards' and 'shard_rows' must be lists of equal length")
        for name in names:
            if not isinstance(name, str) or Path(name).name != name or not (d / name).is_file():
                raise ValueError(f"{path}: shard {name!r} is missing or not a plain file name in {str(d)!r}")
        return cls(d_in=int(info["d_in"]), shard_rows=[int(r) for r in rows], info=info, directory=d)


class _ShardWriter:
    """Accumulates rows into in-memory shards of ``shard_size`` rows (on-disk stores are written
    shard by shard by :func:`_harvest_to_disk`)."""

    def __init__(self, shard_size: int, info: dict[str, Any]):
        self.shard_size, self.info = shard_size, info
        self.buffer: list[tuple[Tensor, Tensor]] = []
        self.buffered = 0
        self.shards: list[tuple[Tensor, Tensor]] = []
        self.rows: list[int] = []
        self.norm_sum = 0.0

    def add(self, acts: Tensor, loc: Tensor) -> None:
        self.norm_sum += float(acts.float().norm(dim=-1).sum())
        self.buffer.append((acts, loc))
        self.buffered += acts.shape[0]
        while self.buffered >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        acts = torch.cat([a for a, _ in self.buffer])
        loc = torch.cat([l for _, l in self.buffer])
        rest = (acts[n:], loc[n:])
        self.buffer = [rest] if rest[0].shape[0] else []
        self.buffered = rest[0].shape[0]
        self.rows.append(n)
        self.shards.append((acts[:n].contiguous(), loc[:n].contiguous()))

    def finish(self, d_in: int) -> ActivationStore:
        if self.buffered:
            self._flush(self.buffered)
        n = sum(self.rows)
        info = {**self.info, "n_rows": n,
                "scaling_factor": math.sqrt(d_in) / (self.norm_sum / n) if self.norm_sum > 0 else 1.0}
        return ActivationStore(d_in=d_in, shard_rows=self.rows, info=info, shards=self.shards)


def check_hook_name(model, hook: str) -> str:
    """``hook`` must be one of the model's hook points."""
    if not isinstance(hook, str) or hook not in model.hook_dict:
        near = [h for h in model.hook_dict if isinstance(hook, str) and h.endswith(hook.split(".")[-1])][:6]
        raise ValueError(f"hook: {hook!r} is not a hook of this model (e.g. {near or list(model.hook_dict)[:6]})")
    return hook


def is_state_hook(hook: str) -> bool:
    return hook.endswith("hook_state")


def _positions(positions: Sequence[int] | None, length: int, state: bool) -> list[int] | None:
    """Sorted non-negative positions (negatives count from the end); None = every position."""
    if positions is None:
        return list(range(length)) if state else None
    if isinstance(positions, int):
        positions = [positions]
    try:
        pos = sorted({int(p) + length if int(p) < 0 else int(p) for p in positions})
    except (TypeError, ValueError):
        raise ValueError(f"positions: expected integers, got {positions!r}") from None
    if not pos or pos[0] < 0 or pos[-1] >= length:
        raise ValueError(f"positions: expected positions in [-{length}, {length}) for {length}-token "
                         f"sequences, got {list(positions)}")
    return pos


def _grab_batch(model, hook: str, chunk: Tensor, pos: list[int] | None) -> Tensor:
    """``hook``'s activation on ``chunk [B, L]`` as ``[B, T, ...]`` (T = selected positions); the
    forward pass stops right after the hook fires."""
    got: dict[str, Tensor] = {}

    def grab(x: Tensor, hook=None) -> None:
        got["x"] = x.detach()
        raise _Stop

    state = is_state_hook(hook)
    try:
        with model.hooks(fwd_hooks=[(hook, grab)]):
            if state:
                with model.tap_states(pos):
                    model(chunk)
            else:
                model(chunk)
    except _Stop:
        pass
    if "x" not in got:
        raise ValueError(f"hook: {hook!r} did not fire during the forward pass")
    x = got["x"]
    B, L = chunk.shape
    if not state:
        if x.dim() < 3 or x.shape[:2] != (B, L):
            raise ValueError(f"hook: {hook!r} reports shape {list(x.shape)}, expected [batch={B}, seq_len={L}, ...]")
        if pos is not None:
            x = x[:, torch.tensor(pos, device=x.device)]
    return x


@torch.no_grad()
def harvest(model, hook: str, tokens: Tensor, positions: Sequence[int] | None = None, batch_size: int = 32,
            out: str | os.PathLike | None = None, shard_size: int = 65536, dtype: torch.dtype = torch.float32,
            progress: Progress = True) -> ActivationStore:
    """Activations of ``hook`` on ``tokens [B, L]`` as an :class:`ActivationStore` of ``[N, d_in]`` rows.

    Works on every architecture and hook. ``positions``: which positions to keep (default every
    position; negatives count from the end). ``...mixer.hook_state`` is read through
    ``model.tap_states(positions)`` and flattened (its trailing shape is ``info["vector_shape"]``).
    ``batch_size`` sequences run at once; ``out``: a directory for an on-disk store (safetensors
    shards of ``shard_size`` rows plus ``index.json``, each written atomically), else in memory.

    On-disk harvests are resumable and data-parallel: shard ``i`` always holds rows
    ``[i·shard_size, (i+1)·shard_size)``; under ``torchrun`` rank ``r`` of ``W`` writes the shards
    ``i ≡ r (mod W)``, and a rerun after a crash skips the shards already on disk (the same
    settings and tokens are required). The index is written last, by rank 0, once every shard is
    there, so the store is identical whatever the number of ranks.
    """
    hook = check_hook_name(model, hook)
    tokens = _check_tokens(model, tokens)
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    B, L = tokens.shape
    pos = _positions(positions, L, is_state_hook(hook))
    info = {"hook_name": hook, "model_name": getattr(model, "name", None) or model.cfg.arch,
            "arch": model.cfg.arch, "positions": pos, "context_size": L, "n_sequences": B,
            "dtype": str(dtype).removeprefix("torch.")}
    if out is not None:
        return _harvest_to_disk(model, hook, tokens, pos, batch_size, Path(out), shard_size, dtype, info, progress)
    writer = _ShardWriter(shard_size, info)
    d_in, T = None, len(pos) if pos is not None else L
    bar = progress_bar(progress, total=B, desc=f"harvest {hook}", unit="seq")
    for start in range(0, B, batch_size):
        x, loc = _rows(model, hook, tokens, start, min(B, start + batch_size), pos, dtype)
        info.setdefault("vector_shape", list(x.shape[2:]))
        d_in = math.prod(x.shape[2:])
        writer.add(x.reshape(-1, d_in), loc)
        bar.update(x.shape[0])
    bar.close()
    return writer.finish(int(d_in))


def _check_tokens(model, tokens: Tensor) -> Tensor:
    """``model.check_tokens`` on blocks of sequences: the ids keep their (small) dtype instead of
    becoming one int64 copy of the whole corpus; batches are converted as they run."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.numel() == 0 or tokens.dtype == torch.int64:
        return model.check_tokens(tokens)
    for part in tokens.split(4096):
        model.check_tokens(part)
    return tokens


def _rows(model, hook: str, tokens: Tensor, s0: int, s1: int, pos: list[int] | None,
          dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Activations ``[s1 - s0, T, ...]`` (on the CPU, in ``dtype``) of sequences ``s0:s1`` and their
    locations ``[(s1 - s0)·T, 2]``."""
    L = tokens.shape[1]
    x = _grab_batch(model, hook, tokens[s0:s1].to(model.device), pos).to("cpu", dtype)
    T = len(pos) if pos is not None else L
    seq = torch.arange(s0, s1).repeat_interleave(T)
    p = torch.tensor(pos if pos is not None else list(range(L))).repeat(s1 - s0)
    return x, torch.stack([seq, p], 1)


# ----------------------------------------------------------------------------- on-disk, resumable, data-parallel

PLAN_FILE = "harvest.json"  # the settings of an unfinished on-disk harvest; folded into the index at the end


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def _fingerprint(tokens: Tensor) -> str:
    """sha256 of the token ids: a resumed harvest must run on exactly the same data."""
    import hashlib

    h = hashlib.sha256()
    for chunk in tokens.reshape(-1).split(1 << 24):
        h.update(chunk.to('cpu', torch.int64).numpy().tobytes())  # the ids, whatever their dtype or device
    return h.hexdigest()


def _start_plan(directory: Path, plan: dict[str, Any]) -> None:
    """Rank 0: refuse a finished store or another run's leftovers, drop the temporary files a
    killed run left behind, and record ``plan`` (or check it against the recorded one)."""
    if (directory / INDEX_FILE).exists():
        raise FileExistsError(f"out: {str(directory)!r} already holds an activation store; pick a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PLAN_FILE
    if path.is_file():
        _check_plan(path, plan)
    else:
        if any(directory.glob("shard_*.safetensors")):  # shards whose settings nobody recorded: never reused
            raise FileExistsError(f"out: {str(directory)!r} holds shard files but no {PLAN_FILE}; pick a new "
                                  "directory")
        text = json.dumps(plan, indent=1)
        _atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    for tmp in directory.glob(".shard_*.tmp"):  # a killed writer's unfinished file: never a shard
        tmp.unlink(missing_ok=True)


def _check_plan(path: Path, plan: dict[str, Any]) -> None:
    try:
        theirs = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if theirs != json.loads(json.dumps(plan)):
        diff = sorted(k for k in set(plan) | set(theirs) if plan.get(k) != theirs.get(k))
        raise ValueError(f"out: {str(path.parent)!r} holds an unfinished harvest with other settings ({diff}); "
                         "rerun it with its own settings or pick a new directory")


def _shard_meta(path: Path) -> dict[str, str] | None:
    """The metadata of a finished shard file, or None when there is none (or it is unreadable)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - a damaged file is rewritten, never trusted
        return None


def _write_shard(directory: Path, i: int, acts: Tensor, loc: Tensor, vector_shape: list[int]) -> None:
    from safetensors.torch import save_file

    from seqlens.probes.sae.distributed import crash_point

    meta = {"rows": str(acts.shape[0]), "norm_sum": repr(float(acts.float().norm(dim=-1).sum())),
            "vector_shape": json.dumps(vector_shape)}

    def write(tmp: str) -> None:
        save_file({"acts": acts.contiguous(), "locations": loc.contiguous()}, tmp, metadata=meta)
        crash_point("shard", i)  # the file is written but not yet renamed: a kill here must not count

    _atomic_write(directory / _shard_name(i), write)


def _harvest_to_disk(model, hook: str, tokens: Tensor, pos: list[int] | None, batch_size: int, directory: Path,
                     shard_size: int, dtype: torch.dtype, info: dict[str, Any], progress: Progress) -> ActivationStore:
    from seqlens.probes.sae.distributed import barrier, world

    rank, size = world()
    B, L = tokens.shape
    T = len(pos) if pos is not None else L
    n_rows = B * T
    n_shards = -(-n_rows // shard_size)
    plan = {**info, "shard_size": shard_size, "n_rows": n_rows, "tokens_sha256": _fingerprint(tokens)}
    if rank == 0:
        _start_plan(directory, plan)
    barrier()
    if rank != 0:
        _check_plan(directory / PLAN_FILE, plan)
    rows = [min(shard_size, n_rows - i * shard_size) for i in range(n_shards)]
    todo = [i for i in range(rank, n_shards, size)
            if (_shard_meta(directory / _shard_name(i)) or {}).get("rows") != str(rows[i])]
    bar = progress_bar(progress if rank == 0 else False, total=len(todo), desc=f"harvest {hook}", unit="shard")
    for i in todo:
        r0, r1 = i * shard_size, i * shard_size + rows[i]
        s0, s1 = r0 // T, -(-r1 // T)  # the sequences holding rows r0:r1 (edge ones are cut)
        parts = [_rows(model, hook, tokens, s, min(s1, s + batch_size), pos, dtype) for s in range(s0, s1, batch_size)]
        x = torch.cat([a for a, _ in parts])
        vector_shape = list(x.shape[2:])
        acts = x.reshape(-1, math.prod(vector_shape))[r0 - s0 * T:r1 - s0 * T]
        loc = torch.cat([l for _, l in parts])[r0 - s0 * T:r1 - s0 * T]
        _write_shard(directory, i, acts, loc, vector_shape)
        bar.update(1)
    bar.close()
    barrier()
    if rank == 0:
        _write_index(directory, plan, rows)
    barrier()
    return ActivationStore.open(directory)


def _write_index(directory: Path, plan: dict[str, Any], rows: list[int]) -> None:
    """Rank 0, after every rank is done: check every shard is there and complete, then write the
    index (atomically, last) and drop the plan."""
    metas = [_shard_meta(directory / _shard_name(i)) for i in range(len(rows))]
    bad = [i for i, (m, r) in enumerate(zip(metas, rows)) if m is None or m.get("rows") != str(r)]
    if bad:
        raise RuntimeError(f"harvest: shards {bad[:5]} of {str(directory)!r} are missing or incomplete after "
                           "every rank finished; rerun the same command to complete them")
    from safetensors import safe_open

    with safe_open(str(directory / _shard_name(0)), "pt") as f:
        d_in = int(f.get_slice("acts").get_shape()[1])
    norm_sum = sum(float(m["norm_sum"]) for m in metas)
    info = {k: v for k, v in plan.items() if k not in ("shard_size", "tokens_sha256")}
    info = {"format": FORMAT, "d_in": d_in, "shards": [_shard_name(i) for i in range(len(rows))],
            "shard_rows": rows, **info, "vector_shape": json.loads(metas[0]["vector_shape"]),
            "scaling_factor": math.sqrt(d_in) / (norm_sum / plan["n_rows"]) if norm_sum > 0 else 1.0,
            "shard_size": plan["shard_size"], "tokens_sha256": plan["tokens_sha256"]}
    text = json.dumps(info, indent=1)
    _atomic_write(directory / INDEX_FILE, lambda tmp: Path(tmp).write_text(text))
    (directory / PLAN_FILE).unlink(missing_ok=True)
