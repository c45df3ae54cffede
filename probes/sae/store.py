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
    """Accumulates rows and writes a shard file whenever ``shard_size`` rows are buffered (to disk
    when ``directory`` is set, else kept in memory); the index is written last, atomically."""

    def __init__(self, directory: Path | None, shard_size: int, info: dict[str, Any]):
        self.directory, self.shard_size, self.info = directory, shard_size, info
        self.buffer: list[tuple[Tensor, Tensor]] = []
        self.buffered = 0
        self.shards: list[tuple[Tensor, Tensor]] = []
        self.names: list[str] = []
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
        head, rest = (acts[:n].contiguous(), loc[:n].contiguous()), (acts[n:], loc[n:])
        self.buffer = [rest] if rest[0].shape[0] else []
        self.buffered = rest[0].shape[0]
        self.rows.append(n)
        if self.directory is None:
            self.shards.append(head)
            return
        from safetensors.torch import save_file

        name = f"shard_{len(self.names):05d}.safetensors"
        _atomic_write(self.directory / name, lambda tmp: save_file({"acts": head[0], "locations": head[1]}, tmp))
        self.names.append(name)

    def finish(self, d_in: int) -> ActivationStore:
        if self.buffered:
            self._flush(self.buffered)
        n = sum(self.rows)
        info = {**self.info, "n_rows": n,
                "scaling_factor": math.sqrt(d_in) / (self.norm_sum / n) if self.norm_sum > 0 else 1.0}
        if self.directory is None:
            return ActivationStore(d_in=d_in, shard_rows=self.rows, info=info, shards=self.shards)
        info = {"format": FORMAT, "d_in": d_in, "shards": self.names, "shard_rows": self.rows, **info}
        text = json.dumps(info, indent=1)
        _atomic_write(self.directory / INDEX_FILE, lambda tmp: Path(tmp).write_text(text))
        return ActivationStore.open(self.directory)


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
    """
    hook = check_hook_name(model, hook)
    tokens = model.check_tokens(tokens)
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    B, L = tokens.shape
    pos = _positions(positions, L, is_state_hook(hook))
    directory = None
    if out is not None:
        directory = Path(out)
        if (directory / INDEX_FILE).exists():
            raise FileExistsError(f"out: {str(directory)!r} already holds an activation store; pick a new directory")
        directory.mkdir(parents=True, exist_ok=True)
    info = {"hook_name": hook, "model_name": getattr(model, "name", None) or model.cfg.arch,
            "arch": model.cfg.arch, "positions": pos, "context_size": L, "n_sequences": B,
            "dtype": str(dtype).removeprefix("torch.")}
    writer = _ShardWriter(directory, shard_size, info)
    d_in, T = None, len(pos) if pos is not None else L
    bar = progress_bar(progress, total=B, desc=f"harvest {hook}", unit="seq")
    for start in range(0, B, batch_size):
        chunk = tokens[start:start + batch_size].to(model.device)
        x = _grab_batch(model, hook, chunk, pos)
        info.setdefault("vector_shape", list(x.shape[2:]))
        d_in = math.prod(x.shape[2:])
        seq = torch.arange(start, start + chunk.shape[0]).repeat_interleave(T)
        p = torch.tensor(pos if pos is not None else list(range(L))).repeat(chunk.shape[0])
        writer.add(x.reshape(-1, d_in).to("cpu", dtype), torch.stack([seq, p], 1))
        bar.update(chunk.shape[0])
    bar.close()
    return writer.finish(int(d_in))
