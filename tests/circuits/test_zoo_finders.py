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


def test_zoo_circuits_reports_the_sets_it_ablated(tmp_path, capsys):
    """induction-attn2 has 8 heads: past its top 3, only C(5, 3) = 10 distinct random triples exist, so
    a request for 12 ablates 10, and the log and verdict must say 10, not 12."""
    import json

    from seqlens.studies.zoo_circuits import main

    assert main(["--models", "induction-attn2", "--finders", "induction", "--top", "3", "--n-random", "12",
                 "--out", str(tmp_path)]) == 0
    check = json.loads((tmp_path / "metrics.json").read_text())["causal_check"]
    assert (check["n_random"], check["n_sets"]) == (12, 10)
    out = capsys.readouterr().out
    assert "10 (all distinct; 12 requested) random head sets" in out and "12 random" not in out
