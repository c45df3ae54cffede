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

__all__ = [
    "HeadScores",
    "duplicate_token_scores",
    "induction_scores",
    "layer_patterns",
    "previous_token_scores",
    "repeated_random_tokens",
    "template_score",
]
