"""How well an SAE reconstructs its hook (docs/methods.md §8): ``evaluate`` and ``splice``.

Reconstruction metrics over N samples (x̂ = sae(x), f = sae.encode(x)):
L0 = mean #{f_i > 0}; L1 = mean Σ|f_i|; FVU = Σ_d Var_n(x − x̂) / Σ_d Var_n(x) (population
variances over the samples); cosine = mean cos(x, x̂); norm ratio = mean ‖x̂‖/‖x‖; dead fraction =
share of latents that never fire on the N samples; dense fraction = share firing on more than 10 %.

With a model: the next-token cross-entropy of the model as it is (L_orig), with the hook's output
replaced by the SAE's reconstruction (L_SAE, :func:`splice`) and by zeros (L_zero), CE loss
recovered ``(L_zero − L_SAE) / (L_zero − L_orig)`` and the spliced-in loss ``L_SAE − L_orig``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from seqlens.probes.gates import NotApplicableError
from seqlens.progress import Progress, progress_bar
from seqlens.probes.sae.arch import SAE
from seqlens.probes.sae.store import ActivationStore, check_hook_name, harvest, is_state_hook
from seqlens.result import Result

DENSE = 0.1  # a latent firing on more than this share of samples is "dense"


@dataclass(kw_only=True)
class SAEMetrics(Result):
    """Reconstruction (and, with a model, downstream-loss) metrics of one SAE on one data set.
    ``feature_frequency [d_sae]``: the share of samples on which each latent fires."""

    n_samples: int
    l0: float
    l1: float
    fvu: float
    cosine: float
    norm_ratio: float
    dead_fraction: float
    dense_fraction: float
    feature_frequency: Tensor
    ce_orig: float | None = None
    ce_sae: float | None = None
    ce_zero: float | None = None
    ce_recovered: float | None = None
    spliced_loss_delta: float | None = None

    NAMES = ("l0", "l1", "fvu", "cosine", "norm_ratio", "dead_fraction", "dense_fraction", "ce_orig", "ce_sae",
             "ce_zero", "ce_recovered", "spliced_loss_delta")

    def to_frame(self):
        """``metric, value`` rows (CE rows only when a model was given)."""
        import pandas as pd

        rows = [(n, getattr(self, n)) for n in self.NAMES if getattr(self, n) is not None]
        return pd.DataFrame(rows, columns=["metric", "value"])

    def figure(self, **layout: Any):
        """Latent firing frequencies (log10 histogram; dead latents at the left edge) with the
        headline numbers in the title."""
        import plotly.graph_objects as go

        freq = self.feature_frequency.detach().cpu().double()
        logf = torch.log10(freq.clamp_min(1.0 / max(self.n_samples, 1) / 10)).tolist()
        fig = go.Figure(go.Histogram(x=logf, nbinsx=50, name="latents"))
        title = f"L0 {self.l0:.2f} · FVU {self.fvu:.3f} · dead {self.dead_fraction:.1%}"
        if self.ce_recovered is not None:
            title += f" · CE recovered {self.ce_recovered:.3f}"
        fig.update_layout(title=title, xaxis_title="log10 firing frequency", yaxis_title="latents")
        fig.update_layout(**layout)
        return fig


class _Accumulator:
    """Streaming sums for the reconstruction metrics (float64, so FVU is exact to rounding)."""

    def __init__(self, d_in: int, d_sae: int):
        z = lambda n: torch.zeros(n, dtype=torch.float64)  # noqa: E731
        self.n, self.sx, self.sxx, self.se, self.see = 0, z(d_in), z(d_in), z(d_in), z(d_in)
        self.l0 = self.l1 = self.cos = self.ratio = 0.0
        self.fires = torch.zeros(d_sae, dtype=torch.long)

    def add(self, x: Tensor, x_hat: Tensor, f: Tensor) -> None:
        x, x_hat, f = x.double().cpu(), x_hat.double().cpu(), f.double().cpu()
        e = x - x_hat
        self.n += x.shape[0]
        self.sx += x.sum(0); self.sxx += (x * x).sum(0)  # noqa: E702
        self.se += e.sum(0); self.see += (e * e).sum(0)  # noqa: E702
        self.l0 += float((f > 0).sum()); self.l1 += float(f.abs().sum())  # noqa: E702
        self.cos += float(F.cosine_similarity(x, x_hat, dim=-1).sum())
        self.ratio += float((x_hat.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).sum())
        self.fires += (f > 0).sum(0)

    def result(self, settings: dict[str, Any]) -> SAEMetrics:
        n = self.n
        var = lambda s, ss: (ss / n - (s / n) ** 2).clamp_min(0).sum()  # noqa: E731  population variance
        freq = self.fires.double() / n
        return SAEMetrics(settings=settings, n_samples=n, l0=self.l0 / n, l1=self.l1 / n,
                          fvu=float(var(self.se, self.see) / var(self.sx, self.sxx).clamp_min(1e-30)),
                          cosine=self.cos / n, norm_ratio=self.ratio / n,
                          dead_fraction=float((self.fires == 0).double().mean()),
                          dense_fraction=float((freq > DENSE).double().mean()), feature_frequency=freq.float())


def _row_batches(data: Tensor | ActivationStore, batch_size: int) -> Iterator[Tensor]:
    if isinstance(data, ActivationStore):
        for acts, _ in data.iter_shards():
            yield from acts.split(batch_size)
    else:
        yield from data.split(batch_size)


@torch.no_grad()
def reconstruction_metrics(sae: SAE, data: Tensor | ActivationStore, batch_size: int = 4096,
                           settings: dict[str, Any] | None = None) -> SAEMetrics:
    """The reconstruction metrics of ``sae`` on rows ``[N, d_in]`` (a tensor or a store)."""
    if isinstance(data, Tensor) and (data.dim() != 2 or data.shape[-1] != sae.cfg.d_in or data.shape[0] == 0):
        raise ValueError(f"X: expected activations [N, d_in={sae.cfg.d_in}] with N > 0, got {list(data.shape)}")
    if isinstance(data, ActivationStore) and data.d_in != sae.cfg.d_in:
        raise ValueError(f"X: the store holds d_in={data.d_in} rows, the SAE expects d_in={sae.cfg.d_in}")
    dev = sae.W_dec.device
    acc = _Accumulator(sae.cfg.d_in, sae.cfg.d_sae)
    for x in _row_batches(data, batch_size):
        x = x.to(dev, torch.float32)
        f = sae.encode(x)
        acc.add(x, sae.decode(f), f)
    return acc.result({"architecture": sae.architecture, "d_sae": sae.cfg.d_sae, **(settings or {})})


@contextlib.contextmanager
def splice(model, sae: SAE, hook: str):
    """Inside this context, ``hook``'s output is replaced by ``sae(output)`` on every forward pass.

    Hook outputs ``[..., d_in]`` are reconstructed along their last dimension. ``hook_state`` is a
    read-out tap (it reports the recurrent state; the scan does not read it back), so replacing
    it would change nothing downstream: splicing it raises ``NotApplicableError`` (a ValueError);
    splice the mixer's output or the residual stream instead."""
    check_hook_name(model, hook)
    if is_state_hook(hook):
        raise NotApplicableError(f"hook: {hook!r} is a read-out tap of the recurrent state (SeqModel.tap_states); the "
                         "scan never reads it back, so an SAE spliced there could not change the model's output. "
                         "Splice blocks.{l}.hook_resid_* or blocks.{l}.mixer.hook_out instead")
    if not isinstance(sae, SAE):
        raise TypeError(f"sae: expected a seqlens SAE, got {type(sae).__name__}")

    def replace(x: Tensor, hook=None) -> Tensor:
        if x.shape[-1] != sae.cfg.d_in:
            raise ValueError(f"hook: {hook.name if hook else ''!r} outputs {list(x.shape)}, the SAE expects "
                             f"[..., d_in={sae.cfg.d_in}]")
        return sae(x).to(x.dtype)

    with model.hooks(fwd_hooks=[(hook, replace)]):
        yield model


def next_token_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """Mean next-token cross-entropy of ``logits [B, L, V]`` on ``tokens [B, L]`` (B·(L−1) terms)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten().to(logits.device))


@torch.no_grad()
def ce_metrics(model, sae: SAE, hook: str, tokens: Tensor, batch_size: int = 16,
               progress: Progress = False) -> dict[str, float]:
    """L_orig, L_SAE (spliced), L_zero (hook zero-ablated), CE loss recovered and the spliced-in
    loss delta, averaged over every next-token prediction of ``tokens``."""
    if tokens.shape[1] < 2:
        raise ValueError(f"tokens: expected sequences of at least 2 tokens for a next-token loss, "
                         f"got {tokens.shape[1]}")
    totals = {"orig": 0.0, "sae": 0.0, "zero": 0.0}
    zero = lambda x, hook=None: torch.zeros_like(x)  # noqa: E731
    bar = progress_bar(progress, total=tokens.shape[0], desc="CE with SAE spliced", unit="seq")
    for chunk in tokens.split(batch_size):
        chunk = chunk.to(model.device)
        w = chunk.shape[0] / tokens.shape[0]
        totals["orig"] += w * float(next_token_loss(model(chunk), chunk))
        with splice(model, sae, hook):
            totals["sae"] += w * float(next_token_loss(model(chunk), chunk))
        with model.hooks(fwd_hooks=[(hook, zero)]):
            totals["zero"] += w * float(next_token_loss(model(chunk), chunk))
        bar.update(chunk.shape[0])
    bar.close()
    gap = totals["zero"] - totals["orig"]
    return {"ce_orig": totals["orig"], "ce_sae": totals["sae"], "ce_zero": totals["zero"],
            "ce_recovered": (totals["zero"] - totals["sae"]) / gap if gap != 0 else math.nan,
            "spliced_loss_delta": totals["sae"] - totals["orig"]}


def evaluate(sae: SAE, X: Tensor | ActivationStore, model=None, hook: str | None = None,
             positions: list[int] | None = None, batch_size: int = 16, progress: Progress = False) -> SAEMetrics:
    """Metrics of ``sae`` (module docstring).

    Without ``model``: ``X`` holds activation rows ``[N, d_in]`` (a tensor or an ActivationStore).
    With ``model``: ``X`` holds token ids ``[B, L]``; the activations of ``hook`` (default the
    SAE's ``metadata["hook_name"]``) at ``positions`` are harvested for the reconstruction metrics,
    and the CE metrics are added (not for ``hook_state``, a read-out tap: see :func:`splice`).
    """
    if not isinstance(sae, SAE):
        raise TypeError(f"sae: expected a seqlens SAE, got {type(sae).__name__}")
    if model is None:
        if not isinstance(X, (Tensor, ActivationStore)):
            raise TypeError(f"X: expected activations [N, d_in] or an ActivationStore, got {type(X).__name__}")
        return reconstruction_metrics(sae, X)
    hook = hook or sae.cfg.metadata.get("hook_name")
    if hook is None:
        raise ValueError("hook: the SAE's metadata names no hook_name; pass hook=...")
    store = harvest(model, hook, X, positions=positions, batch_size=batch_size, progress=progress)
    settings = {"hook_name": hook, "model_name": getattr(model, "name", None) or model.cfg.arch,
                "n_sequences": int(X.shape[0]), "context_size": int(X.shape[1])}
    m = reconstruction_metrics(sae, store, settings=settings)
    if not is_state_hook(hook):
        for key, value in ce_metrics(model, sae, hook, model.check_tokens(X), batch_size, progress).items():
            setattr(m, key, value)
    return m
