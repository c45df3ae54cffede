"""Every head finder runs on every zoo architecture (the MQAR organisms: transformer, Mamba, GLA,
minGRU, LSTM) and gives finite scores of the right shape."""

from __future__ import annotations

import pytest
import torch

import seqlens
from seqlens.circuits import FINDERS
from seqlens.circuits.ablation import n_heads

ORGANISMS = ["mqar-transformer", "mqar-mamba", "mqar-gla", "mqar-mingru", "mqar-lstm"]
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
