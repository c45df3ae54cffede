"""seqlens.circuits: head finders, interventions and causal checks; every analysis returns a Result.

Finders (each a ``HeadScores [n_layers, n_heads]``; recurrent models through their implicit
attention or linearised value path, recorded in ``settings``): previous-token, duplicate-token,
induction (:mod:`.token_heads`), n-gram (:mod:`.ngram`), copying (:mod:`.ov`), successor
(:mod:`.successor`), retrieval (:mod:`.retrieval`), sinks (:mod:`.sinks`). Interventions:
:func:`ablate_heads`, :func:`calibrate_sinks`; checks: :func:`causal_check`,
:func:`search_calibration_heads`.
"""

from dataclasses import dataclass
from typing import Any, Callable

from seqlens.circuits.ablation import CausalCheck, ablate_heads, all_heads, causal_check, check_heads
from seqlens.circuits.heads import HeadScores
from seqlens.circuits.ngram import dfa_tokens, ngram_labels, ngram_scores
from seqlens.circuits.ov import copying_scores, effective_embedding, ov_matrices
from seqlens.circuits.calibration import (CalibrationMetric, CalibrationPatterns, calibration_metric,
                                          calibration_patterns)
from seqlens.circuits.patterns import Patterns, attention_patterns, layer_patterns
from seqlens.circuits.retrieval import needle_accuracy, needle_prompts, retrieval_scores
from seqlens.circuits.sinks import (CalibrationSearch, SinkScores, calibrate_sinks, search_calibration_heads,
                                    sink_scores)
from seqlens.circuits.successor import ordinal_sets, successor_scores
from seqlens.circuits.task_metric import TaskMetric, resolve_task
from seqlens.circuits.token_heads import (duplicate_token_scores, induction_scores, previous_token_scores,
                                          repeated_random_tokens, template_score)


@dataclass(frozen=True)
class Finder:
    """One head finder for generic callers (the dashboard, studies): ``finder(model, tokens=None)``.
    ``takes_tokens`` False means the scores come from the weights (OV circuits) or from the finder's
    own prompts (retrieval), and ``tokens`` is ignored."""

    fn: Callable[..., HeadScores]
    takes_tokens: bool
    description: str

    def __call__(self, model, tokens=None, **kwargs: Any) -> HeadScores:
        return self.fn(model, tokens=tokens, **kwargs) if self.takes_tokens else self.fn(model, **kwargs)


def _ngram(n: int) -> Callable[..., HeadScores]:
    def score(model, tokens=None, **kwargs: Any) -> HeadScores:
        return ngram_scores(model, n, tokens=tokens, **kwargs)

    return score


# Every head finder by family name (the dashboard's Heads page and the studies iterate over this).
FINDERS: dict[str, Finder] = {
    "previous_token": Finder(previous_token_scores, True, "attention to the previous token (mul)"),
    "duplicate_token": Finder(duplicate_token_scores, True, "attention to earlier copies of the current token (mul)"),
    "induction": Finder(induction_scores, True, "attention to the token after an earlier copy (prefix matching)"),
    "ngram1": Finder(_ngram(1), True, "1-gram head: mass on keys after the current token's earlier copies"),
    "ngram2": Finder(_ngram(2), True, "2-gram head: keys after earlier copies of the last 2 tokens"),
    "ngram3": Finder(_ngram(3), True, "3-gram head: keys after earlier copies of the last 3 tokens"),
    "sinks": Finder(sink_scores, True, "attention mass on the first token (StreamingLLM sinks)"),
    "copying": Finder(copying_scores, False, "OV-circuit eigenvalue copying score Σλ/Σ|λ| (weights only)"),
    "successor": Finder(successor_scores, False, "OV-circuit succession over ordinal tokens (weights only)"),
    "retrieval": Finder(retrieval_scores, False, "copy hits on the needle while answering needle-in-a-haystack "
                        "prompts (Wu et al.; own prompts)"),
}

__all__ = [
    "CalibrationMetric", "CalibrationPatterns", "Patterns", "attention_patterns", "calibration_metric",
    "calibration_patterns",
    "FINDERS", "CalibrationSearch", "CausalCheck", "Finder", "HeadScores", "SinkScores", "TaskMetric",
    "ablate_heads", "all_heads", "calibrate_sinks", "causal_check", "check_heads", "copying_scores",
    "dfa_tokens", "duplicate_token_scores", "effective_embedding", "induction_scores", "layer_patterns",
    "needle_accuracy", "needle_prompts", "ngram_labels", "ngram_scores", "ordinal_sets", "ov_matrices", "previous_token_scores",
    "repeated_random_tokens", "resolve_task", "retrieval_scores", "search_calibration_heads", "sink_scores", "successor_scores",
    "template_score",
]
