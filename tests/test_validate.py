"""The shared integer validator (seqlens.validate) and the checks that use it."""

from __future__ import annotations

import pytest

from seqlens.validate import ArgumentTypeError, check_int, positive_int


def test_positive_int_accepts_integers():
    assert positive_int("n", 3) == 3 and type(positive_int("n", 3)) is int
    assert positive_int("n", 0, minimum=0) == 0
    assert check_int("k", -5) == -5 and check_int("k", 4, low=1, high=4) == 4


@pytest.mark.parametrize("value", [True, 2.0, "3", None, [1]], ids=["bool", "float", "str", "none", "list"])
def test_positive_int_rejects_non_integers_naming_the_argument(value):
    with pytest.raises(ArgumentTypeError, match=r"^batch: expected an integer >= 1"):
        positive_int("batch", value)
    # one error type that old callers catching TypeError or ValueError still catch
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(ArgumentTypeError, ValueError)


def test_out_of_range():
    with pytest.raises(ValueError, match=r"^seq_len: expected an integer >= 2, got 1$"):
        positive_int("seq_len", 1, minimum=2)
    with pytest.raises(ValueError, match=r"^k: expected an integer <= 4, got 5$"):
        check_int("k", 5, high=4)


def test_callers_use_it():
    from seqlens import tasks
    from seqlens.corpus import StdlibCorpus
    from seqlens.models import ModelConfig
    from seqlens.models.train import Recipe

    with pytest.raises(TypeError, match="batch"):
        tasks.induction(batch=2.0, seq_len=16, vocab_size=8)
    with pytest.raises(ValueError, match="Recipe.steps"):
        Recipe("r", ModelConfig(arch="transformer", vocab_size=8, d_model=8, n_layers=1, n_heads=1),
               "task:induction", steps=10.5)
    with pytest.raises(ValueError, match="^batch: "):
        next(iter(StdlibCorpus().batches(True, 8, steps=1)))
