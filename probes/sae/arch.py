"""The five SAE architectures, with SAELens 6's inference semantics (docs/methods.md §8).

Every SAE maps ``x [..., d_in]`` to codes ``f [..., d_sae]`` and back: ``x̂ = f W_dec + b_dec``.
Parameters carry SAELens' names and shapes: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``,
``b_enc [d_sae]``, ``b_dec [d_in]``, ``threshold [d_sae]`` (JumpReLU). The encoder input is
``x − b_dec`` when ``apply_b_dec_to_input`` (SAELens' ``process_sae_in``).

- ``standard``: ``f = ReLU((x − b_dec) W_enc + b_enc)``.
- ``topk``: the k largest pre-activations, then ReLU (OpenAI); with SAELens'
  ``rescale_acts_by_decoder_norm`` the pre-activations are multiplied by ‖W_dec[i]‖ and the codes
  divided by it before decoding.
- ``jumprelu``: ``f = ReLU(z) · [z > ReLU(θ)]`` (SAELens; equals ``z · H(z − θ)`` for θ ≥ 0).
  BatchTopK SAEs are JumpReLU SAEs at inference (SAELens saves them so).
- ``matching_pursuit``: tied (``W_enc = W_dec^T``, no ``b_enc``); greedy steps
  ``c = ReLU(W_dec r)``, ``j = argmax c``, ``f_j += c_j``, ``r -= c_j W_dec[j]`` — at most
  ``max_iterations`` steps, stopping early per sample on a repeated support or a residual norm
  below ``residual_threshold`` (SAELens' ``_encode_matching_pursuit``). Decoding adds ``b_dec``
  only when ``apply_b_dec_to_input``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

ARCHITECTURES = ("standard", "topk", "jumprelu", "matching_pursuit")  # saved / loadable forms
TRAINABLE = ("standard", "topk", "batchtopk", "jumprelu", "matching_pursuit")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


@dataclass
class SAEConfig:
    """SAELens 6's inference config (``cfg.json``). ``metadata`` holds ``hook_name``,
    ``model_name`` and how the SAE was trained (``training_architecture``, ...). Fields that an
    architecture does not use keep their defaults and are not written for it."""

    architecture: str
    d_in: int
    d_sae: int
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    metadata: dict[str, Any] = field(default_factory=dict)
    k: int | None = None  # topk
    rescale_acts_by_decoder_norm: bool = False  # topk
    residual_threshold: float = 0.0  # matching_pursuit
    max_iterations: int | None = None  # matching_pursuit
    stop_on_duplicate_support: bool = False  # matching_pursuit

    ARCH_KEYS: ClassVar[dict[str, tuple[str, ...]]] = {
        "standard": (), "jumprelu": (), "topk": ("k", "rescale_acts_by_decoder_norm"),
        "matching_pursuit": ("residual_threshold", "max_iterations", "stop_on_duplicate_support"),
    }
    BASE_KEYS: ClassVar[tuple[str, ...]] = ("d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
                                            "normalize_activations", "reshape_activations", "metadata")

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture: expected one of {list(ARCHITECTURES)}, got {self.architecture!r}")
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {self.dtype!r}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(f"normalize_activations: expected one of {list(NORMALIZATIONS)}, "
                             f"got {self.normalize_activations!r}")
        if self.reshape_activations != "none":
            raise ValueError(f"reshape_activations: only 'none' is supported (hook_z SAEs are not), "
                             f"got {self.reshape_activations!r}")
        if self.architecture == "topk" and (not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae):
            raise ValueError(f"k: expected an integer in [1, d_sae={self.d_sae}] for a topk SAE, got {self.k!r}")
        if self.max_iterations is not None and (not isinstance(self.max_iterations, int) or self.max_iterations < 1):
            raise ValueError(f"max_iterations: expected a positive integer or None, got {self.max_iterations!r}")

    def to_dict(self) -> dict[str, Any]:
        """The ``cfg.json`` dict SAELens 6 writes for this architecture (its key order)."""
        keys = self.BASE_KEYS + self.ARCH_KEYS[self.architecture]
        out = {key: copy.deepcopy(getattr(self, key)) for key in keys}
        out["architecture"] = self.architecture
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SAEConfig":
        """Read a ``cfg.json`` dict; keys this library does not use (training settings SAELens
        adds) are ignored, like SAELens' ``filter_valid_dataclass_fields``."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("metadata") is None:
            kwargs["metadata"] = {}
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "SAEConfig":
        return SAEConfig(**{**asdict(self), **changes})


class SAE(nn.Module):
    """Base class: encode / decode / forward with SAELens' input processing. Build one with
    :func:`make_sae`; subclasses define ``_activate`` (the pre-activation → code map)."""

    architecture: ClassVar[str] = ""
    PARAMS: ClassVar[tuple[str, ...]] = ("W_enc", "W_dec", "b_enc", "b_dec")

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        dt = DTYPES[cfg.dtype]
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, dtype=dt))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dt))
        if "W_enc" in self.PARAMS:
            self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dt))
            self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt))
        self._norm_stats: tuple[Tensor, Tensor] | None = None

    # -- SAELens' process_sae_in / run-time normalisation -------------------------------------
    def _normalize_in(self, x: Tensor) -> Tensor:
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":  # scale each input to norm sqrt(d_in), undone on decode
            coeff = self.cfg.d_in ** 0.5 / x.norm(dim=-1, keepdim=True)
            self._norm_stats = (coeff, torch.zeros_like(coeff))
            return x * coeff
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            self._norm_stats = (std, mu)
            return x / (std + 1e-5)
        return x  # "expected_average_only_in" has no run-time part in SAELens (folded on load)

    def _normalize_out(self, x: Tensor) -> Tensor:
        if self.cfg.normalize_activations == "constant_norm_rescale" and self._norm_stats is not None:
            x = x / self._norm_stats[0]
        elif self.cfg.normalize_activations == "layer_norm" and self._norm_stats is not None:
            std, mu = self._norm_stats
            x = x * std + mu  # as SAELens (eps only on the way in)
        self._norm_stats = None
        return x

    def sae_in(self, x: Tensor) -> Tensor:
        """The encoder's input: ``x`` (cast, normalised) minus ``b_dec`` if ``apply_b_dec_to_input``."""
        x = self._normalize_in(x.to(self.W_dec.dtype))
        return x - self.b_dec * self.cfg.apply_b_dec_to_input

    def pre_acts(self, x: Tensor) -> Tensor:
        """Pre-activations ``(x − b_dec) W_enc + b_enc`` ``[..., d_sae]``."""
        return self.sae_in(x) @ self.W_enc + self.b_enc

    def _activate(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """Codes ``f [..., d_sae]`` of ``x [..., d_in]``."""
        self._check_input(x)
        return self._activate(self.pre_acts(x))

    def decode(self, f: Tensor) -> Tensor:
        """Reconstruction ``f W_dec + b_dec`` ``[..., d_in]`` (undoing run-time normalisation)."""
        if f.shape[-1] != self.cfg.d_sae:
            raise ValueError(f"f: expected codes [..., d_sae={self.cfg.d_sae}], got {list(f.shape)}")
        return self._normalize_out(f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec)

    def forward(self, x: Tensor) -> Tensor:
        """``decode(encode(x))``."""
        return self.decode(self.encode(x))

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a tensor [..., d_in={self.cfg.d_in}], got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"x: expected activations [..., d_in={self.cfg.d_in}], got {list(x.shape)}")

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def weights(self) -> dict[str, Tensor]:
        """The tensors SAELens saves for this architecture (its state-dict names)."""
        return {name: getattr(self, name).detach().contiguous() for name in self.PARAMS}

    def save(self, directory) -> "Path":
        """Write ``cfg.json`` and ``sae_weights.safetensors`` in SAELens 6's format (see :mod:`.io`)."""
        from seqlens.probes.sae.files import write_directory

        return write_directory(directory, self.cfg.to_dict(), self.weights())

    def extra_repr(self) -> str:
        return f"architecture={self.architecture!r}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}"


class StandardSAE(SAE):
    """ReLU SAE (trained with an L1 penalty, see :mod:`.train`)."""

    architecture = "standard"

    def _activate(self, z: Tensor) -> Tensor:
        return torch.relu(z)


def topk_codes(z: Tensor, k: int) -> Tensor:
    """SAELens' ``TopK``: keep the ``k`` largest entries of the last dimension, ReLU them, zero the rest."""
    values, indices = torch.topk(z, k=k, dim=-1, sorted=False)
    return torch.zeros_like(z).scatter(-1, indices, values.relu())


class TopKSAE(SAE):
    """TopK SAE (OpenAI, Gao et al. 2024): exactly ``k`` non-negative codes per input at most."""

    architecture = "topk"

    def pre_acts(self, x: Tensor) -> Tensor:
        z = super().pre_acts(x)
        if self.cfg.rescale_acts_by_decoder_norm:  # SAELens: select as if the decoder were unit-norm
            z = z * self.W_dec.norm(dim=-1)
        return z

    def _activate(self, z: Tensor) -> Tensor:
        return topk_codes(z, int(self.cfg.k))

    def decode(self, f: Tensor) -> Tensor:
        if self.cfg.rescale_acts_by_decoder_norm:
            f = f / self.W_dec.norm(dim=-1)
        return super().decode(f)


class JumpReLUSAE(SAE):
    """JumpReLU SAE (Rajamanoharan et al. 2024); also the inference form of BatchTopK SAEs."""

    architecture = "jumprelu"
    PARAMS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, dtype=DTYPES[cfg.dtype]))

    def _activate(self, z: Tensor) -> Tensor:
        return torch.relu(z) * (z > self.threshold.relu()).to(z.dtype)


class MatchingPursuitSAE(SAE):
    """Matching-pursuit SAE (MP-SAE, Costa et al. 2025): tied weights, greedy residual pursuit."""

    architecture = "matching_pursuit"
    PARAMS = ("W_dec", "b_dec")

    @property
    def W_enc(self) -> Tensor:  # tied: SAELens exposes W_enc = W_dec^T and does not save it
        return self.W_dec.T

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return matching_pursuit(self.sae_in(x), self.W_dec, self.cfg.residual_threshold,
                                self.cfg.max_iterations, self.cfg.stop_on_duplicate_support)

    def decode(self, f: Tensor) -> Tensor:
        if f.shape[-1] != self.cfg.d_sae:
            raise ValueError(f"f: expected codes [..., d_sae={self.cfg.d_sae}], got {list(f.shape)}")
        out = f.to(self.W_dec.dtype) @ self.W_dec
        if self.cfg.apply_b_dec_to_input:  # tied SAE: b_dec only when it was removed on the way in
            out = out + self.b_dec
        return self._normalize_out(out)


def matching_pursuit(r: Tensor, W_dec: Tensor, residual_threshold: float = 0.0,
                     max_iterations: int | None = None, stop_on_duplicate_support: bool = False) -> Tensor:
    """Codes ``[..., d_sae]`` of the centred input ``r [..., d_in]``: SAELens 6's
    ``_encode_matching_pursuit`` (differentiable through the selected atoms' values)."""
    shape = r.shape
    r = r.reshape(-1, shape[-1])
    n, (d_sae, d_in) = r.shape[0], W_dec.shape
    steps = d_in if max_iterations is None else max_iterations
    acts = torch.zeros(n, d_sae, device=r.device, dtype=r.dtype)
    prev = torch.zeros(n, d_sae, dtype=torch.bool, device=r.device)
    done = torch.zeros(n, dtype=torch.bool, device=r.device)
    for _ in range(steps):
        with torch.no_grad():
            j = (r @ W_dec.T).relu().max(dim=1, keepdim=True).indices
        atom = W_dec[j.squeeze(1)]
        c = (r * atom).sum(-1, keepdim=True).relu() * (~done).unsqueeze(1).to(r.dtype)
        acts = acts.scatter_add(1, j, c)
        r = r - c * atom
        if stop_on_duplicate_support or residual_threshold > 0:
            with torch.no_grad():
                support = acts != 0
                if stop_on_duplicate_support:
                    done = done | (support == prev).all(dim=1)
                    prev = support
                if residual_threshold > 0:
                    done = done | (r.norm(dim=-1) < residual_threshold)
                if bool(done.all()):
                    break
    return acts.reshape(*shape[:-1], d_sae)


CLASSES: dict[str, type[SAE]] = {c.architecture: c for c in (StandardSAE, TopKSAE, JumpReLUSAE, MatchingPursuitSAE)}


def make_sae(cfg: SAEConfig) -> SAE:
    """An SAE of ``cfg.architecture`` with zero parameters (fill them by training or loading)."""
    return CLASSES[cfg.architecture](cfg)
