"""Every head finder runs on every zoo architecture (the MQAR organisms: transformer, Mamba, Mamba-2,
GLA, minGRU, LSTM) and gives finite scores of the right shape."""

from __future__ import annotations

import pytest
import torch

import seqlens
from seqlens.circuits import FINDERS
from seqlens.circuits.ablation import n_heads

ORGANISMS = ["mqar-transformer", "mqar-mamba", "mqar-mamba2", "mqar-gla", "mqar-mingru", "mqar-lstm"]
KWARGS = {  # small data so the whole grid stays fast on CPU
    "retrieval": {"lengths": [32], "depths": [0.5], "n_trials": 2, "progress": False},
    "sinks": {"batch": 2, "seq_len": 24},
}


@pytest.mark.filterwarnings("ignore:retrieval_scores")  # MQAR organisms never learned the needle task
@pytest.mark.parametrize("name", ORGANISMS)
def test_every_finder_on_every_zoo_architecture(name):
    model = seqlens.load(name)
    for family, finder in FINDERS.items():
        kwargs = KWARGS.get(family, {"seq_len": 24, "batch": 2} if finder.takes_tokens else {})
        res = finder(model, **kwargs)
        assert res.scores.shape == (model.cfg.n_layers, n_heads(model)), (family, res.scores.shape)
        assert torch.isfinite(res.scores).all(), (name, family)


def test_circuits_zoo_study_runs_small(tmp_path, capsys):
    """studies/circuits_zoo.py end to end on one organism and two finders."""
    import json

    from seqlens.studies.circuits_zoo import main

    assert main(["--models", "mqar-gla", "--finders", "induction", "copying", "--top", "3", "--n-random", "3",
                 "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["finders"]["mqar-gla"]) == {"induction", "copying"}
    check = metrics["causal_check"]
    assert check["fraction_removed"] > 0.6 and check["random_fraction_removed_mean"] < check["fraction_removed"]
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert "causal check" in capsys.readouterr().out
