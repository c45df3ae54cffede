"""Sparse autoencoders on every architecture (docs/methods.md §8), SAELens-compatible.

::

    from seqlens.probes import sae
    store = sae.harvest(model, "blocks.1.hook_resid_post", tokens)      # any hook, any architecture
    s = sae.train_sae(store, architecture="topk", d_sae=2048, k=32, steps=2000, batch_size=1024)
    f = s.encode(x); x_hat = s.decode(f)
    s.save(directory); s = sae.load(directory)                          # SAELens 6 format
    m = sae.evaluate(s, tokens, model=model, hook="blocks.1.hook_resid_post")

Modules: :mod:`.arch` (the architectures), :mod:`.io` (SAELens format), :mod:`.store`
(harvesting, activation stores), :mod:`.train`, :mod:`.metrics` (evaluate, splice),
:mod:`.features` (feature reports).
"""

from seqlens.probes.sae.arch import (ARCHITECTURES, SAE, JumpReLUSAE, MatchingPursuitSAE, SAEConfig, StandardSAE,
                                     TopKSAE, make_sae, matching_pursuit)
from seqlens.probes.sae.features import FeatureReport, FeatureTable, feature_report, feature_table
from seqlens.probes.sae.io import list_shipped, load, save
from seqlens.probes.sae.store import ActivationStore, harvest
from seqlens.probes.sae.metrics import SAEMetrics, evaluate, splice
from seqlens.probes.sae.train import TrainingLog, train_sae

__all__ = [
    "ARCHITECTURES", "ActivationStore", "FeatureReport", "FeatureTable", "JumpReLUSAE", "MatchingPursuitSAE", "SAE",
    "SAEConfig", "SAEMetrics", "StandardSAE", "TopKSAE", "TrainingLog", "evaluate", "feature_report", "feature_table",
    "harvest", "list_shipped", "load", "make_sae", "matching_pursuit", "save", "splice", "train_sae",
]
