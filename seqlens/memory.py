"""Measure the tensor memory an operation allocates, on any device (including CPU, where PyTorch
keeps no allocator statistics).

``TensorMemoryTracker`` is a ``TorchDispatchMode``: every tensor produced by an ATen op inside it
is registered by its storage; bytes are counted while any tensor on that storage is alive. This
gives the peak of live tensor memory allocated inside the context (inputs and parameters created
before it are not counted, nor are views of them or in-place results on them) and the largest single allocation — enough to prove that a fast path
never materialises a given tensor. It slows execution: measure memory and time in separate runs.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class MemoryReport:
    peak_bytes: int = 0
    largest_bytes: int = 0
    largest_shape: tuple[int, ...] = ()
    shapes: list[tuple[int, ...]] = field(default_factory=list)


class TensorMemoryTracker(TorchDispatchMode):
    """Context manager: ``with TensorMemoryTracker() as mem: f()`` then ``mem.report``."""

    def __init__(self, record_shapes: bool = False) -> None:
        super().__init__()
        self.report = MemoryReport()
        self._record_shapes = record_shapes
        self._live = 0
        self._refs: dict[int, int] = {}  # storage data_ptr -> number of live tensors using it
        self._sizes: dict[int, int] = {}
        self._seen: set[int] = set()  # ids of tensors already registered

    def _release(self, ptr: int, tid: int) -> None:
        self._seen.discard(tid)
        self._refs[ptr] -= 1
        if self._refs[ptr] == 0:
            self._live -= self._sizes.pop(ptr)
            del self._refs[ptr]

    def _register(self, t: torch.Tensor, aliased: set[int]) -> None:
        if id(t) in self._seen or t.device.type == "meta":
            return
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if ptr == 0:
            return
        if ptr not in self._refs and ptr in aliased:
            return  # a view / in-place result on memory allocated before tracking (an input, a weight)
        self._seen.add(id(t))
        if ptr not in self._refs:
            self._refs[ptr], self._sizes[ptr] = 0, nbytes
            self._live += nbytes
            r = self.report
            r.peak_bytes = max(r.peak_bytes, self._live)
            if nbytes > r.largest_bytes:
                r.largest_bytes, r.largest_shape = nbytes, tuple(t.shape)
            if self._record_shapes:
                r.shapes.append(tuple(t.shape))
        self._refs[ptr] += 1
        weakref.finalize(t, self._release, ptr, id(t))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = tree_flatten((args, kwargs or {}))[0]
        aliased = {x.untyped_storage().data_ptr() for x in inputs
                   if isinstance(x, torch.Tensor) and x.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._register(t, aliased)
        return out
