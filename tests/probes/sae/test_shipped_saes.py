"""The SAEs shipped with the zoo (scripts/train_shipped_saes.py): each loads by name, fits its
organism's hook, and reconstructs fresh held-out stdlib text (validation split, windows drawn
with a seed the training script never used) with FVU < 0.5."""

from __future__ import annotations

import json

import pytest
import torch

import seqlens
from seqlens.corpus import StdlibCorpus
from seqlens.probes import sae
from seqlens.probes.sae.io import _shipped

# The minimum: residual SAEs on the text Transformer and Mamba, a Mamba state SAE, and one
# on an LSTM or minGRU.
REQUIRED = {"text-transformer/resid-l1", "text-mamba/resid-l1", "text-mamba/state-l1"}
SEQ_LEN, N_SEQS, SEED = 64, 4, 12345


def fresh_val_windows() -> torch.Tensor:
    text = StdlibCorpus().tokens("val")
    g = torch.Generator().manual_seed(SEED)
    starts = torch.randint(0, len(text) - SEQ_LEN, (N_SEQS,), generator=g)
    return torch.stack([text[s:s + SEQ_LEN] for s in starts.tolist()]).long()


def test_the_required_saes_are_shipped():
    names = set(sae.list_shipped())
    assert REQUIRED <= names, sorted(names)
    assert any(n.startswith(("text-lstm/", "text-mingru/")) for n in names), sorted(names)


@pytest.mark.parametrize("name", sae.list_shipped())
def test_shipped_sae_loads_fits_its_hook_and_reconstructs_heldout_text(name):
    s = sae.load(name)
    organism = name.split("/")[0]
    hook = s.cfg.metadata["hook_name"]
    assert s.cfg.metadata["model_name"] == organism
    model = seqlens.load(organism).eval()
    tokens = fresh_val_windows()
    positions = s.cfg.metadata.get("positions")
    positions = [p for p in positions if p < SEQ_LEN] if positions else None
    with torch.no_grad():
        X = sae.harvest(model, hook, tokens, positions=positions, progress=False).to_tensor()
        assert X.shape[1] == s.cfg.d_in  # the organism's hook width
        m = sae.evaluate(s, X.to(s.W_dec.dtype))
    assert m.fvu < 0.5, (name, m.fvu)
    assert 0 < m.l0 <= s.cfg.d_sae


@pytest.mark.parametrize("name", sae.list_shipped())
def test_shipped_metrics_file_matches_the_cfg(name):
    directory = dict(_shipped())[name]
    recorded = json.loads((directory / "metrics.json").read_text())
    cfg = json.loads((directory / "cfg.json").read_text())
    assert cfg["metadata"]["heldout_metrics"] == recorded
    assert recorded["split"] == "val" and recorded["fvu"] < 0.5
    assert (directory / "sae_weights.safetensors").stat().st_size < 600_000  # the zoo's size budget
