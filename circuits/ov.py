"""OV circuits of every head, the effective embedding, and copying scores (docs/methods.md §1, §3).

Convention (TransformerLens, row vectors): a head that reads the residual vector ``x`` and puts
attention weight ``a`` on it writes ``a · x W_OV`` with ``W_OV = W_V W_O`` ``[d_model, d_model]``.
:func:`ov_factors` returns the two factors ``W_V [H, d_model, r]`` and ``W_O [H, r, d_model]``
(``r`` the head's value width), :func:`ov_matrices` their product.

What "the OV circuit" is, per architecture (recorded as ``settings["ov"]`` by the scores):

- **Attention** (transformer, FoX) — *exact*. ``W_V^h`` = rows of ``v`` of the kv head that query
  head ``h`` reads (``h // (H / n_kv)``, grouped-query attention), ``W_O^h`` = the columns of ``o``
  of head ``h``: ``hook_z[:, :, h] @ W_O^h = pattern_h @ (x @ W_V^h W_O^h)`` for the mixer input
  ``x = ln1(resid)`` (plus the value bias, ``b_V^h W_O^h``, when there is one). Rotary and the FoX
  forget gate act on the pattern only.
- **GLA / RetNet** — its heads: ``v_proj`` rows then ``o_proj`` columns of head ``h``, with the
  group norm's *weight* (a constant diagonal) between them. Omitted: the group norm's ``1/rms``
  and the SiLU output gate, per-token factors outside the implicit attention (docs/methods.md §7).
  With those two set to 1, ``hook_out = Σ_h α_h @ (x @ W_OV^h)`` holds exactly.
- **Mamba** — ``cfg.n_groups`` contiguous groups of the ``d_inner`` channels (the grouping of
  ``SeqModel.mixer_pattern``): the x-branch rows of ``in_proj`` of the group, then the group's
  ``out_proj`` columns. Linearised: the depthwise conv is replaced by its DC gain ``Σ_k w_{d,k}``
  per channel (its response to a constant input; it carries the conv's sign, which identity
  would drop); SiLU(conv) is taken as identity; the scan's mixing over positions is the implicit
  attention α and the D skip its diagonal; the SiLU(z) gate (a per-token factor) is omitted.
- **minGRU / minLSTM** — groups of the hidden channels: the candidate rows of ``in_proj``, then
  ``out_proj`` columns; the candidate's activation ``g`` taken as identity (its +0.5 offset and
  the biases omitted); gates are the implicit attention.
- **LSTM** — groups of the cell: the ``g`` (cell input) rows of ``in_proj``, then ``out_proj``
  columns; ``tanh`` of g and of c taken as identity, the recurrent ``U_g h_{t−1}`` term (not a
  function of the token) and the output gate ``o`` (a per-token factor) omitted.

A uniform positive factor (e.g. SiLU′(0) = ½ in place of identity) changes neither score below:
eigenvalue ratios and argmaxes are scale invariant.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from seqlens.circuits.heads import HeadScores
from seqlens.models.mixer import OVFactors

# ----------------------------------------------------------------------------- factors


def check_model(model) -> None:
    if not all(hasattr(model, a) for a in ("cfg", "blocks", "embed", "unembed", "ln_final")):
        raise ValueError(f"model: expected a seqlens SeqModel, got {type(model).__name__}")


@torch.no_grad()
def ov_factors(model, layer: int) -> OVFactors:
    """The OV factors of every head of layer ``layer`` (the mixer's ``ov_factors()``): ``W_V [H,
    d_model, r]``, ``W_O [H, r, d_model]`` (detached), ``kind`` and ``description`` (exact, or
    what the linearisation dropped). Norms are not included."""
    check_model(model)
    model._check_layer(layer)
    f = model.blocks[layer].mixer.ov_factors()
    return OVFactors(f.W_V.detach().clone(), f.W_O.detach().clone(), f.kind, f.description)


def ov_matrices(model, layer: int) -> Tensor:
    """Each head's OV circuit ``W_OV = W_V^h W_O^h``, ``[H, d_model, d_model]`` (row convention:
    ``x @ W_OV[h]`` is what head h writes per unit attention on ``x``, the normalised mixer input).
    Exact for attention, a documented linearisation for recurrent mixers (module docstring)."""
    W_V, W_O, _ = ov_factors(model, layer)
    return W_V @ W_O


def norm_linear(norm) -> Tensor:
    """The linear part ``N [d, d]`` of a LayerNorm / RMSNorm in row convention: ``x ↦ x N`` with
    ``N = (I − 11ᵀ/d) diag(w)`` (LayerNorm: centre, then weight) or ``diag(w)`` (RMSNorm). Left
    out: the ``1/scale`` (a positive factor per token) and the bias — as TransformerLens' weight
    folding (``fold_ln``) folds the weight into the next matrix and keeps neither. Asks the norm
    (``Norm.linear_part``)."""
    return norm.linear_part()


# ----------------------------------------------------------------------------- embedding


def check_token_ids(model, tokens, name: str = "tokens") -> Tensor:
    """``tokens`` (None = the whole vocabulary, or a 1-D sequence / LongTensor of ids) as a 1-D
    LongTensor on the model's device; ValueError naming ``name`` otherwise."""
    V = model.cfg.vocab_size
    if tokens is None:
        return torch.arange(V, device=model.device)
    ids = torch.as_tensor(tokens)
    if ids.dim() != 1 or ids.numel() == 0 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of token ids, got "
                         f"{list(ids.shape)} {ids.dtype}")
    if int(ids.min()) < 0 or int(ids.max()) >= V:
        raise ValueError(f"{name}: token ids must lie in [0, {V}), got range [{int(ids.min())}, "
                         f"{int(ids.max())}]")
    return ids.long().to(model.device)


def embedding_description(model, mlp0: bool = True, ln: bool = True, resid: bool = True) -> str:
    """What :func:`effective_embedding` computes for this model and these options (for settings)."""
    if not mlp0:
        return "W_E[t] (mlp0=False)"
    if model.blocks[0].mlp is None:
        return "W_E[t] (block 0 has no MLP: attn_only or Mamba)"
    inner = "ln2(W_E[t])" if ln else "W_E[t]"
    return ("W_E[t] + " if resid else "") + f"MLP0({inner}) (attention layer 0 ignored)"


@torch.no_grad()
def effective_embedding(model, tokens=None, mlp0: bool = True, ln: bool = True,
                        resid: bool = True) -> Tensor:
    """Gould et al.'s (2023, §2) effective embedding ``e(t) = MLP0(W_E[t])``, ``[n, d_model]`` for
    ``tokens`` (1-D ids; None = every token). Layer 0's attention and positions are ignored.

    ``ln``: the MLP reads ``ln2(W_E[t])`` (as in the model) rather than the raw embedding;
    ``resid``: add ``W_E[t]`` back (the residual stream after block 0). With ``mlp0=False``, or when
    block 0 has no MLP (``attn_only``, Mamba), ``e(t) = W_E[t]`` (see :func:`embedding_description`).
    """
    check_model(model)
    for name, value in (("mlp0", mlp0), ("ln", ln), ("resid", resid)):
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected True or False, got {value!r}")
    x = model.embed.weight[check_token_ids(model, tokens)]
    block = model.blocks[0]
    if not mlp0 or block.mlp is None:
        return x.clone()
    m = block.mlp(block.ln2(x) if ln else x)
    return x + m if resid else m


# ----------------------------------------------------------------------------- copying


def _circuit_core(model, layer: int, full: bool, fold_ln: bool) -> tuple[Tensor, str]:
    """``[H, r, r]`` matrix with the same nonzero eigenvalues as the head's (full) OV circuit,
    by the cyclic rule eig(AB) = eig(BA) ∪ zeros: ``W_O Nf W_U W_E N1 W_V`` (full) or
    ``W_O W_V`` (``W_OV`` alone); ``N1``, ``Nf`` the norms' linear parts when ``fold_ln``."""
    f = ov_factors(model, layer)
    W_V, W_O, kind = f.W_V.double(), f.W_O.double(), f.description
    if fold_ln:
        W_V = norm_linear(model.blocks[layer].ln1).double() @ W_V
    if not full:
        return W_O @ W_V, kind
    W_U = model.unembed.weight.detach().double().T  # [d_model, V]
    if fold_ln:
        W_U = norm_linear(model.ln_final).double() @ W_U
    C = W_U @ model.embed.weight.detach().double()  # Nf W_U W_E, [d_model, d_model]
    return W_O @ C @ W_V, kind


def copying_scores(model, full: bool = True, fold_ln: bool = True) -> HeadScores:
    """Copying scores ``[n_layers, n_heads]`` (docs/methods.md §1; Elhage et al. 2021): with ``λ`` the
    eigenvalues of each head's OV circuit, ``Re Σλ / Σ|λ|`` (+1: the head copies the tokens it
    attends to, −1: it suppresses them; NaN for an all-zero circuit).

    ``full=True``: the vocabulary-space circuit ``W_E W_OV W_U`` ``[V, V]`` (TransformerLens'
    ``W_E @ model.OV @ W_U``); ``full=False``: ``W_OV`` alone. Neither V×V nor d×d is formed: the
    eigenvalues are those of the ``r × r`` matrix ``W_O W_U W_E W_V`` (``r`` the head width), which
    has the same nonzero eigenvalues (eig(AB) = eig(BA) up to zeros, as FactoredMatrix.eigenvalues
    uses), and zeros add to neither sum. ``fold_ln``: include the linear parts of ``ln1`` and
    ``ln_final`` (:func:`norm_linear`, TransformerLens' ``fold_ln``).

    Recurrent mixers: computed on the linearised value→output path of each head group (module
    docstring), recorded in ``settings["ov"]``; it answers "what does this group write about the
    token it reads", not a claim that the mixer is linear.
    """
    check_model(model)
    for name, value in (("full", full), ("fold_ln", fold_ln)):
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected True or False, got {value!r}")
    rows, kinds = [], {}
    for layer in range(model.cfg.n_layers):
        core, kind = _circuit_core(model, layer, full, fold_ln)
        lam = torch.linalg.eigvals(core)  # [H, r] complex128
        rows.append((lam.sum(-1).real / lam.abs().sum(-1)).float())
        kinds[ov_factors(model, layer).kind] = kind
    settings = {
        "model": model.name or type(model).__name__, "arch": model.cfg.arch,
        "measure": "Re Σλ / Σ|λ|", "full": full, "fold_ln": fold_ln,
        "circuit": ("W_E " + ("N1 " if fold_ln else "") + "W_OV " + ("Nf " if fold_ln else "") + "W_U")
        if full else ("N1 W_OV" if fold_ln else "W_OV"),
        "ov": "; ".join(kinds[k] for k in sorted(kinds)),
        "backend": "torch.linalg.eigvals (float64) of the r x r factor product",
    }
    return HeadScores(scores=torch.stack(rows).cpu(), name="copying", settings=settings)


__all__ = ["OVFactors", "copying_scores", "effective_embedding", "embedding_description",
           "norm_linear", "ov_factors", "ov_matrices"]
