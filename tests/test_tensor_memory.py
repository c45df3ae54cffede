"""The tensor-memory tracker behind the benchmarks' peak-memory columns."""

from __future__ import annotations

import torch

from seqlens.memory import TensorMemoryTracker

MIB = 2**20


def test_counts_new_allocations_while_alive():
    with TensorMemoryTracker() as mem:
        a = torch.ones(MIB // 4)  # 1 MiB
        b = a * 2  # 2 MiB live
        del a, b
        c = torch.zeros(MIB // 4)  # back to 1 MiB
    assert mem.report.peak_bytes == 2 * MIB
    assert mem.report.largest_shape == (MIB // 4,)
    del c


def test_views_of_pre_existing_tensors_are_not_allocations():
    x = torch.randn(64, MIB // 256)  # 1 MiB allocated before tracking
    with TensorMemoryTracker() as mem:
        rows = [x[i] for i in range(64)]  # views: no new memory
        y = x.t()  # a view too
        z = x[0] + 1  # 1/64 MiB of real allocation
    assert mem.report.peak_bytes == z.numel() * 4
    del rows, y


def test_views_of_tracked_tensors_keep_their_storage_alive():
    with TensorMemoryTracker() as mem:
        a = torch.ones(MIB // 4)
        v = a[:10]
        del a  # the storage lives on through the view
        b = torch.ones(MIB // 4)
    assert mem.report.peak_bytes == 2 * MIB
    del v, b
