"""Training SAEs of every architecture (docs/methods.md §8), deterministic for a seed and resumable.

Losses (x̂ = decode(f), batch means; ``‖·‖²`` summed over the d_in dimensions):

- ``standard``, ``variant="april2024"`` (Anthropic, April 2024; SAELens' StandardTrainingSAE):
  ``‖x − x̂‖² + λ Σ_i f_i ‖W_dec[i]‖``, no decoder constraint, decoder rows initialised to norm
  0.1 and inputs scaled so E‖x‖ = √d_in (``normalize_activations="expected_average_only_in"``).
  ``variant="classic"`` (``saprmarks/dictionary_learning``): ``‖x − x̂‖² + λ ‖f‖₁`` with unit-norm
  decoder rows.
- ``topk`` (OpenAI): ``‖x − x̂‖² / ‖x − mean(x)‖² + (1/32) AuxK`` where AuxK is the same normalised
  error of the top ``k_aux = d_in / 2`` dead latents reconstructing the residual ``x − x̂``;
  unit-norm decoder rows; ``b_dec`` starts at the geometric median and ``W_enc = W_dec^T``.
- ``batchtopk`` (Bussmann et al.): the ``k · B`` largest codes over the batch, the TopK loss; the
  inference threshold θ is an exponential moving average of the smallest positive code; returned
  (and saved) as a JumpReLU SAE with that threshold, as SAELens does.
- ``jumprelu`` (Rajamanoharan et al.): ``‖x − x̂‖² + λ Σ_i H(z_i − θ_i)``, gradients to θ through the
  straight-through rectangle kernel of bandwidth ε.
- ``matching_pursuit`` (MP-SAE): ``‖x − x̂‖²`` with ``k`` greedy steps, unit-norm decoder rows.

Unit-norm decoders are kept so by removing the gradient's component along each row before the
step and renormalising after it (OpenAI's ``unit_norm_decoder_``). A latent is dead when it did
not fire on the last ``dead_after`` training samples. Batches are a function of (seed, step) only,
so a run resumed from its checkpoint directory reproduces the uninterrupted run exactly.

Under torch.distributed (``torchrun``; :mod:`.distributed`) training is data-parallel: rank ``r``
of ``W`` takes the ``r``-th contiguous ``B / W`` rows of the same global batch and the loss module
runs in DistributedDataParallel (gradients averaged over ranks). What is not a per-row mean is
reduced across ranks so that W processes reproduce the single-process run: the TopK losses'
normaliser ``mean ‖x − mean(x)‖²``, BatchTopK's ``k · B`` cut and threshold, the dead-latent
counters (a latent fired if it fired on any rank) and the logged metrics. The decoder-norm
projection acts on the averaged gradient, so every rank keeps identical weights. Rank 0 writes
checkpoints (on a file system all ranks see).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from seqlens.progress import Progress, progress_bar
from seqlens.probes.sae.arch import (SAE, TRAINABLE, JumpReLUSAE, SAEConfig, make_sae, matching_pursuit,
                                     topk_codes)
from seqlens.probes.sae.distributed import all_gather_cat, all_reduce, barrier, is_distributed, world, wrap_ddp
from seqlens.probes.sae.store import ActivationStore
from seqlens.result import Result

AUXK_COEF = 1 / 32  # OpenAI's auxk_coef
UNIT_NORM = ("topk", "batchtopk", "matching_pursuit")


# ----------------------------------------------------------------------------- settings / log


@dataclass
class TrainSettings:
    architecture: str
    d_sae: int
    k: int | None = None
    steps: int = 1000
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0
    l1_coefficient: float = 1.0
    l0_coefficient: float = 1.0
    variant: str = "april2024"
    jumprelu_bandwidth: float = 0.001
    jumprelu_init_threshold: float = 0.001
    topk_threshold_lr: float = 0.01
    dead_after: int | None = None
    normalize_activations: str = "none"
    device: str = "cpu"


@dataclass(kw_only=True)
class TrainingLog(Result):
    """Loss, L0, batch FVU and dead fraction over the training steps."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    l0: list[float] = field(default_factory=list)
    fvu: list[float] = field(default_factory=list)
    dead_fraction: list[float] = field(default_factory=list)

    def append(self, step: int, loss: float, l0: float, fvu: float, dead: float) -> None:
        for name, value in (("step", step), ("loss", loss), ("l0", l0), ("fvu", fvu), ("dead_fraction", dead)):
            getattr(self, name).append(value)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"step": self.step, "loss": self.loss, "l0": self.l0, "fvu": self.fvu,
                             "dead_fraction": self.dead_fraction})

    def figure(self, **layout: Any):
        """Four panels over training steps: loss, L0, FVU (batch), dead fraction."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        names = ("loss", "l0", "fvu", "dead_fraction")
        fig = make_subplots(rows=1, cols=4, subplot_titles=("loss", "L0", "FVU (batch)", "dead fraction"))
        for i, name in enumerate(names):
            fig.add_trace(go.Scatter(x=self.step, y=getattr(self, name), mode="lines", name=name), row=1, col=i + 1)
        arch = self.settings.get("architecture", "")
        fig.update_layout(title=f"SAE training ({arch})", showlegend=False)
        fig.update_xaxes(title_text="step")
        fig.update_layout(**layout)
        return fig


# ----------------------------------------------------------------------------- data


class _Batches:
    """Batch ``step`` of a store: epoch ``e`` visits the shards in a seeded order and each shard's
    rows in a seeded permutation, so a batch depends on (seed, step) only and touches one or two
    shards (on-disk stores read shard by shard)."""

    def __init__(self, store: ActivationStore, batch_size: int, seed: int):
        self.store, self.B, self.seed = store, batch_size, seed
        self.N = len(store)
        self._epoch: tuple[int, Tensor] | None = None

    def _order(self, epoch: int) -> Tensor:
        if self._epoch is None or self._epoch[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            starts = [0]
            for r in self.store.shard_rows:
                starts.append(starts[-1] + r)
            parts = [starts[s] + torch.randperm(self.store.shard_rows[s], generator=gen)
                     for s in torch.randperm(self.store.n_shards, generator=gen).tolist()]
            self._epoch = (epoch, torch.cat(parts))
        return self._epoch[1]

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> Tensor:
        """Rows ``[B, d_in]`` of batch ``step`` (wrapping into the next epoch when needed); with
        ``world_size`` > 1, rank ``rank``'s contiguous share ``[B / world_size, d_in]`` of it, so the
        ranks together see exactly the single-process batch."""
        idx = self.indices(step)
        share = self.B // world_size
        return self.store.rows(idx[rank * share:(rank + 1) * share])

    def indices(self, step: int) -> Tensor:
        idx: list[Tensor] = []
        pos, need = step * self.B, self.B
        while need:
            epoch, off = divmod(pos, self.N)
            take = min(need, self.N - off)
            idx.append(self._order(epoch)[off:off + take])
            pos, need = pos + take, need - take
        return torch.cat(idx)


def geometric_median(X: Tensor, iters: int = 64, eps: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the summed Euclidean distance to the rows of X."""
    y = X.mean(0)
    for _ in range(iters):
        w = 1 / (X - y).norm(dim=-1).clamp_min(eps)
        y_new = (w[:, None] * X).sum(0) / w.sum()
        if (y_new - y).norm() < eps * (1 + y.norm()):
            return y_new
        y = y_new
    return y


# ----------------------------------------------------------------------------- the trainer


class StepFn(torch.autograd.Function):
    """Heaviside ``H(z − θ)`` with the rectangle-kernel pseudo-derivative for θ (JumpReLU's L0)."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        z, theta = ctx.saved_tensors
        kernel = (((z - theta) / ctx.eps).abs() < 0.5).to(z.dtype)
        return None, (-(1.0 / ctx.eps) * kernel * g).sum(0), None


class JumpReLUFn(torch.autograd.Function):
    """``z · H(z − θ)``: exact gradient to z where it passes, rectangle kernel to θ."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        z, theta = ctx.saved_tensors
        kernel = (((z - theta) / ctx.eps).abs() < 0.5).to(z.dtype)
        return (z > theta).to(z.dtype) * g, (-(theta / ctx.eps) * kernel * g).sum(0), None


def batch_topk_codes(z: Tensor, k: int) -> Tensor:
    """BatchTopK: the ``k · B`` largest ReLU'd codes over the whole batch ``[B, d_sae]`` (under
    torch.distributed the batch is every rank's rows: the cut is the global ``k · B``-th value)."""
    acts = z.relu().flatten()
    if is_distributed():
        n_keep = k * z.shape[0] * world()[1]
        with torch.no_grad():  # each rank's best candidates hold the global top k·B
            candidates = all_gather_cat(torch.topk(acts, min(n_keep, acts.numel())).values)
            cut = torch.topk(candidates, min(n_keep, candidates.numel())).values[-1]
        return torch.where(acts >= cut, acts, torch.zeros_like(acts)).reshape(z.shape)
    top = torch.topk(acts, min(k * z.shape[0], acts.numel()))
    return torch.zeros_like(acts).scatter(0, top.indices, top.values).reshape(z.shape)


def _centred_energy(x: Tensor) -> Tensor:
    """``mean ‖x − mean(x)‖²`` over the batch (every rank's rows under torch.distributed): the
    normaliser of the TopK losses, a constant of the data (no gradient flows through it)."""
    if not is_distributed():
        return (x - x.mean(0)).pow(2).sum(-1).mean()
    with torch.no_grad():
        n = all_reduce(x.new_tensor(float(x.shape[0])))
        mean = all_reduce(x.sum(0)) / n
        return all_reduce((x - mean).pow(2).sum()) / n


def _normalised_mse(recon: Tensor, x: Tensor) -> Tensor:
    return (recon - x).pow(2).sum(-1).mean() / _centred_energy(x).clamp_min(1e-12)


class _Objective(torch.nn.Module):
    """The training loss as a module, so DistributedDataParallel can wrap it: ``forward(x)`` returns
    ``(loss, f, z, recon)``; the SAE is its only submodule (its parameters are the ones averaged)."""

    def __init__(self, trainer: "Trainer"):
        super().__init__()
        self.sae = trainer.sae
        self._trainer = [trainer]  # a list: not registered as a submodule

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        t = self._trainer[0]
        f, z = t.codes(x)
        recon = f @ self.sae.W_dec + self.sae.b_dec
        return t.loss(x, f, z, recon), f, z, recon


class Trainer:
    """One SAE, its optimiser and the training state; ``step(x)`` does one update."""

    def __init__(self, s: TrainSettings, d_in: int, sample: Tensor):
        self.s = s
        saved_as = "jumprelu" if s.architecture == "batchtopk" else s.architecture
        cfg = SAEConfig(architecture=saved_as, d_in=d_in, d_sae=s.d_sae, k=s.k if saved_as == "topk" else None,
                        max_iterations=s.k if saved_as == "matching_pursuit" else None)
        self.sae = make_sae(cfg).to(s.device)
        self._init(sample.to(s.device))
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=s.lr)
        self.since_fired = torch.zeros(s.d_sae, dtype=torch.long, device=s.device)
        self.theta = torch.tensor(-1.0, dtype=torch.float64, device=s.device)  # BatchTopK EMA, -1 = unset
        self.dead_after = s.dead_after or 50 * s.batch_size
        # gradients averaged over ranks when distributed; MP has no encoder pass, BatchTopK no threshold
        self.objective = wrap_ddp(_Objective(self), s.device, find_unused=s.architecture in ("matching_pursuit",
                                                                                          "batchtopk"))

    @torch.no_grad()
    def _init(self, sample: Tensor) -> None:
        s, sae = self.s, self.sae
        gen = torch.Generator().manual_seed(s.seed)
        W = torch.randn(s.d_sae, sae.cfg.d_in, generator=gen).to(sae.W_dec)
        norm = 0.1 if (s.architecture == "standard" and s.variant == "april2024") else 1.0
        sae.W_dec.copy_(norm * W / W.norm(dim=-1, keepdim=True))
        sae.b_dec.copy_(geometric_median(sample.float()).to(sae.b_dec))
        if s.architecture != "matching_pursuit":
            sae.W_enc.copy_(sae.W_dec.T)  # OpenAI / SAELens: the encoder starts as the decoder's transpose
        if isinstance(sae, JumpReLUSAE):
            init = s.jumprelu_init_threshold if s.architecture == "jumprelu" else 0.0
            sae.threshold.fill_(init)

    def codes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(f, z)``: training-time codes and pre-activations of ``x``."""
        s, sae = self.s, self.sae
        if s.architecture == "matching_pursuit":
            f = matching_pursuit(sae.sae_in(x), sae.W_dec, 0.0, s.k, False)
            return f, f
        z = sae.pre_acts(x)
        if s.architecture == "topk":
            return topk_codes(z, s.k), z
        if s.architecture == "batchtopk":
            return batch_topk_codes(z, s.k), z
        if s.architecture == "jumprelu":
            return JumpReLUFn.apply(z, sae.threshold, s.jumprelu_bandwidth), z
        return torch.relu(z), z

    def loss(self, x: Tensor, f: Tensor, z: Tensor, recon: Tensor) -> Tensor:
        s, sae = self.s, self.sae
        mse = (recon - x).pow(2).sum(-1).mean()
        if s.architecture == "standard":
            weights = sae.W_dec.norm(dim=-1) if s.variant == "april2024" else 1.0
            return mse + s.l1_coefficient * (f * weights).sum(-1).mean()
        if s.architecture == "jumprelu":
            return mse + s.l0_coefficient * StepFn.apply(z, sae.threshold, s.jumprelu_bandwidth).sum(-1).mean()
        if s.architecture in ("topk", "batchtopk"):
            return _normalised_mse(recon, x) + AUXK_COEF * self.auxk(x, z, recon)
        return mse

    def auxk(self, x: Tensor, z: Tensor, recon: Tensor) -> Tensor:
        """The top ``k_aux`` dead latents reconstruct the residual (OpenAI's AuxK, normalised MSE)."""
        dead = self.since_fired >= self.dead_after
        n_dead = int(dead.sum())
        if n_dead == 0:
            return recon.new_zeros(())
        k_aux = min(max(self.sae.cfg.d_in // 2, 1), n_dead)
        codes = topk_codes(torch.where(dead, z, torch.full_like(z, -torch.inf)), k_aux)
        residual = (x - recon).detach()
        return _normalised_mse(codes @ self.sae.W_dec, residual).nan_to_num(0.0)

    def step(self, x: Tensor, log: bool = True) -> tuple[float, float, float, float] | None:
        """One update on ``x [B, d_in]``: ``(loss, L0, FVU, dead fraction)`` when ``log`` (the
        metrics cost a device sync), else None."""
        loss, f, z, recon = self.objective(x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        unit = self.s.architecture in UNIT_NORM or (self.s.architecture == "standard" and self.s.variant == "classic")
        if unit:
            self._project_decoder_grad()
        self.opt.step()
        with torch.no_grad():
            if unit:
                self.sae.W_dec.div_(self.sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            if self.s.architecture == "jumprelu":
                self.sae.threshold.clamp_(min=0.0)  # H(z - θ) needs θ >= 0 (SAELens' threshold.relu())
            fired = all_reduce((f > 0).any(0).int(), "max").bool()  # dead-latent counts agree on every rank
            self.since_fired = torch.where(fired, 0, self.since_fired + x.shape[0] * world()[1])
            if self.s.architecture == "batchtopk":
                self._update_threshold(f)
            if not log:
                return None
            if is_distributed():
                return self._global_metrics(x, f, recon, loss)
            l0 = float((f > 0).sum(-1).float().mean())
            fvu = float((x - recon).var(0, unbiased=False).sum() / x.var(0, unbiased=False).sum().clamp_min(1e-12))
            dead = float((self.since_fired >= self.dead_after).float().mean())
        return float(loss.detach()), l0, fvu, dead

    def _global_metrics(self, x: Tensor, f: Tensor, recon: Tensor, loss: Tensor) -> tuple[float, float, float, float]:
        """The logged metrics over every rank's rows (one all-reduce): FVU from the sums and sums of
        squares of the residual and the input."""
        e = x - recon
        packed = torch.cat([e.sum(0), x.sum(0), torch.stack([
            e.pow(2).sum(), x.pow(2).sum(), (f > 0).sum().float(), loss.detach() * x.shape[0],
            x.new_tensor(float(x.shape[0]))])])
        all_reduce(packed)
        d = x.shape[1]
        e_sum, x_sum, (e_sq, x_sq, active, loss_sum, n) = packed[:d], packed[d:2 * d], packed[2 * d:]
        fvu = (e_sq - e_sum.pow(2).sum() / n) / (x_sq - x_sum.pow(2).sum() / n).clamp_min(1e-12)
        dead = float((self.since_fired >= self.dead_after).float().mean())
        return float(loss_sum / n), float(active / n), float(fvu), dead

    @torch.no_grad()
    def _project_decoder_grad(self) -> None:
        W, g = self.sae.W_dec, self.sae.W_dec.grad
        if g is not None:
            g.sub_((g * W).sum(-1, keepdim=True) * W / W.pow(2).sum(-1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def _update_threshold(self, f: Tensor) -> None:
        pos = f[f > 0]
        m = pos.min().double() if pos.numel() else f.new_tensor(math.inf, dtype=torch.float64)
        m = all_reduce(m, "min")  # the smallest positive code over every rank's rows
        if math.isfinite(float(m)):
            lr = self.s.topk_threshold_lr
            self.theta = m if self.theta < 0 else (1 - lr) * self.theta + lr * m
            self.sae.threshold.fill_(float(self.theta))

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Tensor]:
        out = {f"sae.{k}": v.detach().cpu().contiguous() for k, v in self.sae.named_parameters()}
        names = {id(p): n for n, p in self.sae.named_parameters()}
        for p, st in self.opt.state.items():
            for key, value in st.items():
                out[f"opt.{names[id(p)]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        out["since_fired"] = self.since_fired.cpu()
        out["theta"] = self.theta.cpu().reshape(1)
        return out

    def load_state(self, state: dict[str, Tensor]) -> None:
        params = dict(self.sae.named_parameters())
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state[f"sae.{name}"])
        for name, p in params.items():
            keys = [k for k in state if k.startswith(f"opt.{name}.")]
            if keys:
                # Adam keeps "step" on the CPU unless capturable; the moments live with the parameter
                self.opt.state[p] = {k.rsplit(".", 1)[1]: state[k] if k.endswith(".step") else state[k].to(p.device)
                                     for k in keys}
        self.since_fired = state["since_fired"].to(self.s.device)
        self.theta = state["theta"].reshape(()).to(self.s.device)


# ----------------------------------------------------------------------------- entry point


def _as_store(data: Tensor | ActivationStore) -> ActivationStore:
    if isinstance(data, ActivationStore):
        return data
    if isinstance(data, Tensor):
        return ActivationStore.from_tensor(data.detach().cpu().float() if data.dtype not in (
            torch.float32, torch.float64) else data.detach().cpu())
    raise TypeError(f"X_or_store: expected a tensor [N, d_in] or an ActivationStore, got {type(data).__name__}")


def _check(s: TrainSettings, n_rows: int) -> None:
    if s.architecture not in TRAINABLE:
        raise ValueError(f"architecture: expected one of {list(TRAINABLE)}, got {s.architecture!r}")
    for name in ("d_sae", "steps", "batch_size"):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if s.architecture in ("topk", "batchtopk", "matching_pursuit"):
        if isinstance(s.k, bool) or not isinstance(s.k, int) or not 1 <= s.k <= s.d_sae:
            raise ValueError(f"k: expected an integer in [1, d_sae={s.d_sae}] for {s.architecture!r}, got {s.k!r}")
    if s.variant not in ("april2024", "classic"):
        raise ValueError(f"variant: expected 'april2024' or 'classic', got {s.variant!r}")
    if s.normalize_activations not in ("none", "expected_average_only_in"):
        raise ValueError(f"normalize_activations: expected 'none' or 'expected_average_only_in', "
                         f"got {s.normalize_activations!r}")
    if not (isinstance(s.lr, (int, float)) and math.isfinite(s.lr) and s.lr > 0):
        raise ValueError(f"lr: expected a positive number, got {s.lr!r}")


def train_sae(X_or_store: Tensor | ActivationStore, architecture: str = "topk", d_sae: int = 1024,
              k: int | None = None, steps: int = 1000, batch_size: int = 1024, lr: float = 1e-3, seed: int = 0,
              progress: Progress = True, checkpoint_dir: str | os.PathLike | None = None,
              checkpoint_every: int = 500, normalize_activations: str | None = None, device: str | None = None,
              log_every: int = 1, **options: Any) -> SAE:
    """Train an SAE on activation rows ``[N, d_in]`` (a tensor or an :class:`ActivationStore`).

    ``architecture``: ``standard`` | ``topk`` | ``batchtopk`` | ``jumprelu`` | ``matching_pursuit``
    (module docstring); ``k`` for TopK / BatchTopK (codes per sample) and MP (greedy steps).
    ``options``: ``l1_coefficient``, ``variant`` ("april2024" | "classic") for standard,
    ``l0_coefficient``, ``jumprelu_bandwidth``, ``jumprelu_init_threshold`` for JumpReLU,
    ``topk_threshold_lr`` for BatchTopK, ``dead_after`` (samples). ``normalize_activations``:
    "expected_average_only_in" trains on inputs scaled by the store's ``scaling_factor`` and folds
    the factor into the saved weights (default for the April-2024 standard SAE, "none" otherwise).
    ``checkpoint_dir``: resume from it when it holds a checkpoint of the same settings, and save
    one every ``checkpoint_every`` steps and at the end. ``log_every``: steps between log entries
    (each costs a device sync). The returned SAE has ``training_log`` (a :class:`TrainingLog`) and
    SAELens metadata (hook / model names from the store).
    """
    store = _as_store(X_or_store)
    if normalize_activations is None:
        normalize_activations = ("expected_average_only_in" if architecture == "standard"
                                 and options.get("variant", "april2024") == "april2024" else "none")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    unknown = set(options) - {f for f in TrainSettings.__dataclass_fields__} - {"architecture", "d_sae"}
    if unknown:
        raise TypeError(f"train_sae: unknown options {sorted(unknown)}")
    s = TrainSettings(architecture=architecture, d_sae=d_sae, k=k, steps=steps, batch_size=batch_size, lr=lr,
                      seed=seed, normalize_activations=normalize_activations, device=dev, **options)
    _check(s, len(store))
    rank, size = world()
    if s.batch_size % size:
        raise ValueError(f"batch_size: the global batch ({s.batch_size}) must split evenly over the {size} ranks")
    for name, value in (("checkpoint_every", checkpoint_every), ("log_every", log_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    scale = store.scaling_factor if s.normalize_activations == "expected_average_only_in" else 1.0
    batches = _Batches(store, s.batch_size, s.seed)
    sample = store.rows(batches._order(0)[:min(len(store), 4096)]) * scale
    trainer = Trainer(s, store.d_in, sample)
    log = TrainingLog(settings={**asdict(s), "n_rows": len(store), "scaling_factor": scale, "ranks": size,
                                **{k_: store.info.get(k_) for k_ in ("hook_name", "model_name")}})
    start = _resume(trainer, log, checkpoint_dir, s) if checkpoint_dir is not None else 0
    bar = progress_bar(progress if rank == 0 else False, total=s.steps, desc=f"train {architecture} SAE", unit="step")
    bar.update(start)
    for step in range(start, s.steps):
        x = batches(step, rank, size).to(dev, torch.float32) * scale
        logged = trainer.step(x, log=step % log_every == 0 or step == s.steps - 1)
        if logged is not None:
            log.append(step, *logged)
        bar.update(1)
        if checkpoint_dir is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == s.steps) and rank == 0:
            _save_checkpoint(trainer, log, checkpoint_dir, step + 1, s)  # the ranks hold the same state
    bar.close()
    return _finish(trainer, log, store, scale)


def _finish(trainer: Trainer, log: TrainingLog, store: ActivationStore, scale: float) -> SAE:
    """Fold the input scaling into the weights and record how the SAE was made (SAELens metadata)."""
    s, sae = trainer.s, trainer.sae
    with torch.no_grad():
        if scale != 1.0:
            sae.b_dec.div_(scale)  # MP is scale-equivariant: only the centring moves
            if s.architecture != "matching_pursuit":
                sae.W_enc.mul_(scale)
                sae.W_dec.div_(scale)
    sae.cfg.metadata = {
        "model_name": store.info.get("model_name"), "hook_name": store.info.get("hook_name"),
        "hook_head_index": None, "context_size": store.info.get("context_size"), "prepend_bos": False,
        "seqpos_slice": [None], "model_from_pretrained_kwargs": {},
        "training_architecture": s.architecture,
        "training_architecture_details": {k: v for k, v in asdict(s).items()
                                          if k not in ("architecture", "d_sae", "device")},
        "activation_scaling_factor": scale, "normalize_activations_in_training": s.normalize_activations,
        "positions": store.info.get("positions"), "vector_shape": store.info.get("vector_shape"),
        "library": "seqlens",
    }
    sae.training_log = log
    return sae.eval()


CHECKPOINT_FILE = "train_state.safetensors"


def _save_checkpoint(trainer: Trainer, log: TrainingLog, directory, step: int, s: TrainSettings) -> None:
    """One file, replaced atomically: the tensors (SAE, Adam moments, dead-latent counters) and,
    in its safetensors metadata, the step, the settings and the log, so they can never disagree."""
    from safetensors.torch import save_file

    from seqlens.probes.sae.files import atomic_write

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = trainer.state()
    meta = {"step": step, "settings": {k: v for k, v in asdict(s).items() if k != "device"}, "log": log.to_dict()}
    atomic_write(d / CHECKPOINT_FILE, lambda tmp: save_file(state, tmp, metadata={"seqlens_train": json.dumps(meta)}))


def _resume(trainer: Trainer, log: TrainingLog, directory, s: TrainSettings) -> int:
    """The step to continue from: 0 without a checkpoint; the saved step (state and log restored)
    with one; a clear error when the checkpoint was made with other settings."""
    from safetensors import safe_open

    from seqlens.probes.sae.io import read_weights

    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        return 0
    state = read_weights(path)
    with safe_open(str(path), "pt") as f:
        text = (f.metadata() or {}).get("seqlens_train")
    if text is None:
        raise ValueError(f"checkpoint_dir: {str(path)!r} is not a seqlens SAE training checkpoint")
    meta = json.loads(text)
    mine = {k: v for k, v in asdict(s).items() if k not in ("device", "steps")}
    theirs = {k: v for k, v in meta["settings"].items() if k != "steps"}
    if mine != theirs:
        diff = sorted(k for k in mine if mine.get(k) != theirs.get(k))
        raise ValueError(f"checkpoint_dir: {str(directory)!r} holds a run with other settings ({diff}); "
                         "use a new directory")
    trainer.load_state(state)
    saved = TrainingLog.from_json(json.dumps(meta["log"]))
    for name in ("step", "loss", "l0", "fvu", "dead_fraction"):
        setattr(log, name, getattr(saved, name))
    return min(int(meta["step"]), s.steps)
