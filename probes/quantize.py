"""Simulated post-training quantisation of linear layers, with and without outlier handling (Mamba-PTQ).

``quantized(model, bits)`` fake-quantises, inside a ``with`` block, every ``nn.Linear`` of a model
(:func:`~seqlens.probes.outliers.linear_layers`): W8A8-style, symmetric round-to-nearest

    q(x) = clamp(round(x / s), −Q, Q) · s,   Q = 2^(bits−1) − 1,   s = max|x| / Q

with the weight scale per output row and the activation scale per tensor (over the batch and
positions of the current forward: dynamic per-tensor quantisation, the setting in which one outlier
channel inflates ``s`` and crushes every other channel to a few levels). ``keep[name]`` lists input
channels of layer ``name`` that stay in full precision and are left out of its activation scale
(LLM.int8-style mixed precision: the outlier handling). Weights are restored bit for bit on exit.

``ptq_loss`` measures the language-model loss in full precision, quantised, and quantised with the
outlier channels of :func:`~seqlens.probes.outliers.outlier_channels` kept.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from seqlens.result import Result


def fake_quant(x: Tensor, bits: int, dim: int | None = None) -> Tensor:
    """Symmetric round-to-nearest quantisation of ``x`` to ``bits`` bits and back, with one absmax
    scale for the whole tensor (``dim=None``) or per slice along ``dim`` (kept dims reduce)."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 16:
        raise ValueError(f"bits: expected an integer in [2, 16], got {bits!r}")
    levels = 2 ** (bits - 1) - 1
    amax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    scale = (amax / levels).clamp_min(torch.finfo(x.dtype).tiny)
    return (x / scale).round().clamp(-levels, levels) * scale


def _activation_hook(bits: int, kept: Tensor | None):
    def hook(module, args):
        x = args[0]
        if kept is None:
            return (fake_quant(x, bits), *args[1:])
        m = kept.to(x.device)
        q = fake_quant(x.masked_fill(m, 0.0), bits)  # the kept channels do not set the scale
        return (torch.where(m, x, q), *args[1:])
    return hook


@contextlib.contextmanager
def quantized(model, bits: int = 8, weights: bool = True, activations: bool = True,
              keep: Mapping[str, Sequence[int]] | None = None) -> Iterator[None]:
    """Inside this context every linear layer of ``model`` runs fake-quantised (module docstring)."""
    from seqlens.probes.outliers import linear_layers

    fake_quant(torch.zeros(1), bits)  # validates bits before anything is changed
    layers, keep = linear_layers(model), dict(keep or {})
    unknown = sorted(set(keep) - set(layers))
    if unknown:
        raise ValueError(f"keep: unknown linear layers {unknown[:5]}; known e.g. {list(layers)[:5]}")
    saved, handles = {}, []
    try:
        for name, layer in layers.items():
            if weights:
                saved[name] = layer.weight.detach().clone()
                with torch.no_grad():
                    layer.weight.copy_(fake_quant(layer.weight, bits, dim=1))
            if activations:
                idx = [int(c) for c in keep.get(name, [])]
                if any(not 0 <= c < layer.in_features for c in idx):
                    raise ValueError(f"keep: {name} has {layer.in_features} input channels, got {idx}")
                mask = torch.zeros(layer.in_features, dtype=torch.bool)
                mask[idx] = True
                handles.append(layer.register_forward_pre_hook(_activation_hook(bits, mask if idx else None)))
        yield
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for name, w in saved.items():
                layers[name].weight.copy_(w)


@dataclass(kw_only=True)
class QuantResult(Result):
    """Loss and next-token accuracy in full precision (``fp``), fake-quantised (``quant``) and
    quantised with the outlier channels kept in full precision (``kept``); ``n_kept`` channels kept."""

    bits: int
    loss: dict[str, float]
    acc: dict[str, float]
    n_kept: int

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{"condition": c, "loss": self.loss[c], "acc": self.acc[c]} for c in self.loss])

    def figure(self, **layout: Any):
        import plotly.graph_objects as go

        names = list(self.loss)
        fig = go.Figure(go.Bar(x=names, y=[self.loss[c] for c in names]))
        fig.update_layout(title=f"{self.bits}-bit simulated quantisation: loss", yaxis_title="loss (nats)", **layout)
        return fig


def ptq_loss(model, bits: int = 8, outliers=None, tokens: Tensor | None = None, **data: Any) -> QuantResult:
    """Loss / accuracy of ``model`` in full precision, ``bits``-bit quantised, and quantised with the
    outlier input channels of ``outliers`` (an :class:`~seqlens.probes.outliers.OutlierResult`;
    None computes it on the same data) kept. Data: ``tokens`` or the outlier probe's default batch
    (``data``: ``batch``, ``seq_len``, ``seed``)."""
    from seqlens.probes.outliers import _loss_acc, default_batch, outlier_channels

    batch, info = default_batch(model, tokens, **data)
    if outliers is None:
        outliers = outlier_channels(model, tokens=tokens, progress=False, **data)
    keep = {name: chans for name, chans in zip(outliers.layers, outliers.outliers) if chans}
    res = {"fp": _loss_acc(model, batch)}
    with quantized(model, bits):
        res["quant"] = _loss_acc(model, batch)
    with quantized(model, bits, keep=keep):
        res["kept"] = _loss_acc(model, batch)
    settings = {"model": getattr(model, "name", None), "bits": bits, "activation_scale": "per tensor (dynamic)",
                "weight_scale": "per output row", **info}
    return QuantResult(settings=settings, bits=bits, loss={k: v[0] for k, v in res.items()},
                       acc={k: v[1] for k, v in res.items()}, n_kept=sum(len(c) for c in keep.values()))
