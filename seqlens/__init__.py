"""seqlens: an interpretability and analysis workbench for sequence models.

Public API (notebook use)::

    import seqlens
    model = seqlens.load("tiny-mamba")            # zoo name or local directory (ours / HF)
    logits, cache = model.run_with_cache(tokens)  # TransformerLens ActivationCache
    out = model.stream(long_tokens, chunk_size=4096)
"""

from __future__ import annotations

from seqlens.models import ModelConfig, ModelState, SeqModel, build, load
from seqlens.version import __version__


def from_hf(path_or_model, **kwargs):
    """Convert a local Hugging Face checkpoint (directory or loaded model); see
    :func:`seqlens.models.hf.from_hf`."""
    from seqlens.models.hf import from_hf as _from_hf

    return _from_hf(path_or_model, **kwargs)


__all__ = ["ModelConfig", "ModelState", "SeqModel", "__version__", "build", "from_hf", "load"]
