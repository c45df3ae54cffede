"""Analysis metrics the zoo records beside an organism's task metric (``Organism.probes``).

They live here, not in models/, because they use the analyses (seqlens.circuits,
seqlens.probes) and the models package must not import those. ``seqlens zoo build`` passes
:data:`PROBES` to :func:`seqlens.models.zoo.build_organism`; the zoo tests re-measure every
recorded value with another seed.

- ``induction_prefix``: the best head's prefix-matching score (Olsson et al.) from
  :func:`seqlens.circuits.induction_scores` on its default data (10 sequences of 50 random tokens
  repeated once); higher is better. Softmax-attention models only.
- ``repeat_surprisal``: median repeat surprisal (%) from :func:`seqlens.probes.memory.repeat_surprisal`
  on lists of 5 nouns after 32 intervening bytes, 20 trials; lower is better (100 % = no memory).
"""

from __future__ import annotations

from collections.abc import Callable

from seqlens.circuits import induction_scores
from seqlens.probes.memory import repeat_surprisal

__all__ = ["PROBES", "induction_prefix", "repeat_surprisal_pct"]

MEMORY_SETTING = {"set_sizes": (5,), "intervening": (32,), "conditions": ("repeat",), "n_trials": 20, "n_boot": 200}


def induction_prefix(model, seed: int = 0) -> float:
    """Best prefix-matching score over all heads on repeated random tokens (seed ``seed``)."""
    return float(induction_scores(model, seed=seed).scores.max())


def repeat_surprisal_pct(model, seed: int = 0) -> float:
    """Median repeat surprisal (%) of 5-noun lists after 32 intervening tokens (seed ``seed``)."""
    res = repeat_surprisal(model, seed=seed, progress=False, **MEMORY_SETTING)
    return float(res.median.flatten()[0])


PROBES: dict[str, tuple[Callable[..., float], bool]] = {
    "induction_prefix": (induction_prefix, True),
    "repeat_surprisal": (repeat_surprisal_pct, False),
}
"""probe name -> (``fn(model, seed) -> float``, higher is better)."""
