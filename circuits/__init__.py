"""seqlens.circuits: head finders and circuit analyses; every function returns a Result."""

from seqlens.circuits.heads import HeadScores
from seqlens.circuits.patterns import layer_patterns
from seqlens.circuits.token_heads import (
    duplicate_token_scores,
    induction_scores,
    previous_token_scores,
    repeated_random_tokens,
    template_score,
)

# Every head finder by family name: ``FINDERS[name](model, tokens=None, **kwargs) -> HeadScores``
# (the dashboard's Heads page and the studies iterate over this).
FINDERS = {
    "previous_token": previous_token_scores,
    "duplicate_token": duplicate_token_scores,
    "induction": induction_scores,
}

__all__ = [
    "FINDERS",
    "HeadScores",
    "duplicate_token_scores",
    "induction_scores",
    "layer_patterns",
    "previous_token_scores",
    "repeated_random_tokens",
    "template_score",
]
