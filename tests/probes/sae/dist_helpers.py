"""Worker of the 2-process training test (a module of its own so torch.multiprocessing's spawn
can import it in the children)."""

from __future__ import annotations


import torch

# every architecture with the options that reach its distributed code paths (AuxK needs dead latents)
RUNS = {
    "topk": dict(architecture="topk", k=3, dead_after=64),
    "batchtopk": dict(architecture="batchtopk", k=3, dead_after=64),
    "standard": dict(architecture="standard"),
    "classic": dict(architecture="standard", variant="classic", l1_coefficient=0.1),
    "jumprelu": dict(architecture="jumprelu", jumprelu_init_threshold=0.05, l0_coefficient=0.01),
    "matching_pursuit": dict(architecture="matching_pursuit", k=2),
}
COMMON = dict(d_sae=24, steps=12, batch_size=32, lr=3e-3, seed=3, progress=False, device="cpu")


def train_all(X: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weights and logged losses of every run, flattened to one dict of tensors."""
    from seqlens.probes import sae as S

    out = {}
    for name, kw in RUNS.items():
        sae = S.train_sae(X, **COMMON, **kw)
        for p, v in sae.state_dict().items():
            out[f"{name}.{p}"] = v.detach().clone()
        out[f"{name}.loss"] = torch.tensor(sae.training_log.loss)
        out[f"{name}.dead"] = torch.tensor(sae.training_log.dead_fraction)
    return out


def worker(rank: int, world: int, init_file: str, X: torch.Tensor, out_file: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = train_all(X)
        if rank == 0:
            save_file(result, out_file)
    finally:
        dist.destroy_process_group()
