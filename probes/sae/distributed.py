"""torch.distributed for harvesting and SAE training: the process group, the rank's share of the
work, and the few collectives the trainer needs (docs/scale.md).

Nothing here starts processes: ``torchrun --nproc-per-node N`` (or ``--nnodes``) does, and sets
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR``. :func:`init_from_env` joins that
group (NCCL on CUDA, gloo on CPU); without it every function here is the single-process identity,
so the library code that calls them runs unchanged in one process.
"""

from __future__ import annotations

import datetime
import os
import signal

import torch
from torch import Tensor

# how long a collective waits for a missing rank before failing (torchrun usually stops the group first)
TIMEOUT = datetime.timedelta(minutes=float(os.environ.get("SEQLENS_DIST_TIMEOUT_MIN", "30")))


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    if not is_distributed():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def init_from_env(device: str | None = None) -> str:
    """Join the process group torchrun describes in the environment (when ``WORLD_SIZE`` > 1) and
    return this rank's device: ``cuda:LOCAL_RANK`` on a GPU node, else ``device`` or "cpu"."""
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return device or ("cuda" if cuda else "cpu")


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


def all_reduce(t: Tensor, op: str = "sum") -> Tensor:
    """``t`` reduced over the ranks in place (``op``: "sum" | "max" | "min"); returned for chaining."""
    if is_distributed():
        import torch.distributed as dist

        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t


def all_gather_cat(t: Tensor) -> Tensor:
    """Every rank's ``t`` (same shape on all ranks) concatenated along dim 0 in rank order."""
    if not is_distributed():
        return t
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def wrap_ddp(module: torch.nn.Module, device: str, find_unused: bool = False) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when distributed (gradients averaged over ranks during
    backward), else itself. ``find_unused``: some parameters get no gradient (MP never uses its
    encoder, BatchTopK trains without its inference threshold)."""
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    dev = torch.device(device)
    ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def crash_point(what: str, index: int) -> None:
    """Fault injection for the tests: ``SEQLENS_TEST_CRASH=RANK:WHAT:INDEX`` kills this process with
    SIGKILL (no cleanup, like an OOM kill or a lost node) when rank RANK reaches that point."""
    spec = os.environ.get("SEQLENS_TEST_CRASH")
    if spec and spec == f"{world()[0]}:{what}:{index}":
        os.kill(os.getpid(), signal.SIGKILL)
