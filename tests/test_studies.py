"""Every registered paper study in its smoke mode (seconds each), the shared report format, and
``seqlens study``. The smoke numbers are not measurements; the full runs are in docs/studies.md."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch

from seqlens.cli import main as cli
from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES

PAPER_STUDIES = [n for n, info in STUDIES.items() if info.available]


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (metrics.json must be strict JSON)."""
    def refuse(name):
        raise ValueError(f"non-finite number {name} in metrics.json")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_STUDIES)
def test_study_smoke_writes_metrics_and_report(name, tmp_path, capsys):
    module = importlib.import_module(STUDIES[name].module)
    assert module.main(["--smoke", "--out", str(tmp_path)]) == 0
    metrics = strict_json((tmp_path / "metrics.json").read_text())
    html = (tmp_path / "report.html").read_text()
    assert "measured" in metrics and "settings" in metrics
    if "study" in metrics:  # the shared format (lrp_faithfulness and sae_frontier keep their own layouts)
        assert metrics["study"] == name and metrics["claim"] == STUDIES[name].claim
        assert metrics["smoke"] is True and metrics["reproduced"] in (True, False, None)
        assert metrics["verdict"] and metrics["measured"] is not None
        assert any("smoke run" in n for n in metrics["notes"])  # a smoke run says it is not a measurement
        assert set(metrics["organisms"]).isdisjoint(metrics["missing"])
        assert "Claim:" in html and metrics["verdict"].split(";")[0][:40] in html.replace("&#x27;", "'")
        assert f"{name}:" in capsys.readouterr().out


def test_registry_lists_every_paper_of_the_issue():
    wanted = {"induction_phase_change", "retrieval_heads", "successor_heads", "sinks_act", "stuffed_mamba",
              "verbatim_memory", "icll_ngram_heads", "outliers_ptq", "copying", "just_read_twice",
              "zoology_mqar", "fox_forgetting", "zoo_circuits", "lrp_faithfulness", "sae_frontier"}
    assert wanted <= set(STUDIES)
    assert all(STUDIES[n].available for n in wanted - {"sae_frontier"})
    assert all(info.claim and info.paper for info in STUDIES.values())


def test_missing_organism_is_recorded_not_raised(tmp_path):
    args = parser("x", "x").parse_args(["--out", str(tmp_path)])
    study = Study("x", "paper", "claim", args)
    assert study.organism("text-nonexistent-arch") is None
    m = study.finish({"value": math.nan}, None, "nothing measured")
    assert m["missing"] == ["text-nonexistent-arch"] and m["reproduced"] is None
    assert strict_json((tmp_path / "metrics.json").read_text())["measured"] == {"value": None}


def test_cli_study_list_and_errors(capsys):
    assert cli(["study", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in STUDIES)
    assert cli(["study", "no-such-study"]) == 2
    assert "unknown study 'no-such-study'" in capsys.readouterr().err
    assert cli(["study", "copying", "--help"]) == 0
    assert "--smoke" in capsys.readouterr().out


def test_induction_phase_change_smoke_reads_the_trajectory_checkpoints(tmp_path):
    """The smoke mode measures the shipped checkpoints (no retraining): one row per checkpoint plus
    the initial model, and the last row is the shipped organism measured on the same fresh data."""
    import seqlens
    from seqlens.models import zoo
    from seqlens.studies import induction_phase_change as ipc

    assert ipc.main(["--smoke", "--out", str(tmp_path)]) == 0
    metrics = strict_json((tmp_path / "metrics.json").read_text())
    rows = metrics["measured"]["trajectory"]
    assert metrics["source"] == "checkpoints" and metrics["organisms"] == [ipc.ORGANISM]
    assert [r["step"] for r in rows] == [0] + [s for s, _ in zoo.trajectory(ipc.ORGANISM)]
    recipe = zoo.organisms()[ipc.ORGANISM].recipe.replace(eval_batches=1, batch_size=8)
    final = ipc.measure(seqlens.load(ipc.ORGANISM), recipe, recipe.seed + ipc.FRESH_SEED, 2)
    assert final == pytest.approx({k: rows[-1][k] for k in final}, abs=1e-5)
    assert rows[-1]["prefix_score"] > rows[0]["prefix_score"] + 0.2  # the trained model has induction heads


def test_stuffed_mamba_compares_state_sizes_only_within_a_training_length():
    """Claim 1 (a larger state collapses, a smaller one does not) pairs organisms trained at the same
    length; the training length comes from the recipe's final task (tasks.task_kwargs)."""
    import seqlens
    from seqlens.studies import stuffed_mamba as sm

    coll = {"small": {"collapsed": False}, "large": {"collapsed": True}}
    d_state = {"small": 2, "large": 16}
    assert sm.judge(coll, {}, d_state, {"small": 64, "large": 128})["collapse_with_large_state"] is None
    assert sm.judge(coll, {}, d_state, {"small": 64, "large": 64})["collapse_with_large_state"] is True
    flipped = {"small": {"collapsed": True}, "large": {"collapsed": False}}
    assert sm.judge(flipped, {}, d_state, {"small": 64, "large": 64})["collapse_with_large_state"] is False
    assert sm.train_len(seqlens.load("passkey-mamba-n2")) == 64


def test_stuffed_mamba_collapse_is_judged_on_single_prompts_and_splits_by_state_size():
    """The run-C rule: collapsed = works at L (exact ≥ 0.9) but exact < 0.5 at 2L; claim 1 needs the
    collapsed organisms of a training length to be exactly its largest judged states."""
    from seqlens.studies import stuffed_mamba as sm

    at = lambda e1, e2: {64: {"exact": e1}, 128: {"exact": e2}}  # noqa: E731
    assert sm.collapsed(at(1.0, 0.2), 64) is True and sm.collapsed(at(0.95, 0.6), 64) is False
    assert sm.collapsed(at(0.5, 0.0), 64) is None  # fails at its own length: not judged
    d = {"a": 2, "b": 4, "c": 8, "d": 16}
    assert sm.split_at({"a": False, "b": False, "c": True, "d": True}, d) is True
    assert sm.split_at({"a": False, "b": None, "c": True, "d": None}, d) is True  # unjudged ones ignored
    assert sm.split_at({"a": False, "b": True, "c": False, "d": True}, d) is False  # not an upper set
    assert sm.split_at({"a": True, "b": True}, d) is False and sm.split_at({"a": False, "b": False}, d) is False
    assert sm.split_at({"a": False, "b": None}, d) is None


def test_stuffed_mamba_runs_the_three_mitigations_on_a_collapsed_organism(monkeypatch):
    """With the collapse threshold raised above 1 every working organism counts as collapsed, so
    the mitigation path runs: each mitigation is measured on the same single prompts at 2L."""
    import argparse

    import seqlens
    from seqlens.studies import stuffed_mamba as sm

    monkeypatch.setattr(sm, "COLLAPSED", 1.01)
    a = argparse.Namespace(prompts=3, chunk=32, seed=0)
    out = sm.single_prompts(seqlens.load("passkey-mamba-n2"), a)
    assert out["train_len"] == 64 and sorted(out["at"]) == [64, 128, 256] and out["collapsed"] is True
    assert sorted(out["mitigated"]) == ["forget_more", "normalize_states", "state_window"]
    assert all(0 <= m["exact"] <= 1 and m["collapsed"] is True for m in out["mitigated"].values())


def test_fox_forgetting_uses_the_zoos_fox_pair_and_trains_no_stand_in(tmp_path, monkeypatch):
    """With a FoX organism in the zoo (here an untrained fox-passkey written with its recipe into a
    copy of the zoo folder), the study measures the zoo's pair on the same data and never trains."""
    from seqlens.models import zoo
    from seqlens.models.registry import build
    from seqlens.studies import fox_forgetting as ff

    organisms = tmp_path / "organisms"
    organisms.mkdir()
    (organisms / "transformer-passkey").symlink_to(zoo.checkpoint_dir("transformer-passkey"))
    recipe = zoo.organisms()["fox-passkey"].recipe
    build(recipe.model, seed=0).save(organisms / "fox-passkey", extra={"recipe": recipe.to_dict(), "metrics": {}})
    monkeypatch.setattr(zoo, "ORGANISM_DIR", organisms)

    def no_training(steps):
        raise AssertionError("trained a stand-in FoX although the zoo has one")
    monkeypatch.setattr(ff, "stand_in_fox", no_training)
    assert ff.main(["--smoke", "--out", str(tmp_path / "out")]) == 0
    metrics = strict_json((tmp_path / "out" / "metrics.json").read_text())
    pair = metrics["measured"]["pairs"]["fox-passkey"]
    assert pair["fox"]["name"] == "fox-passkey" and pair["transformer"]["name"] == "transformer-passkey"
    assert pair["fox"]["train_len"] == pair["transformer"]["train_len"] == 64  # the task's seq_len, not n_ctx
    assert set(pair["fox"]["at"]) == {"64", "128"} and pair["fox"]["measure"] == "prompts"  # 1 and 2 L (smoke)
    assert "rise" in pair["fox"]["old_stream"] and pair["criterion"]["holds"] in (True, False, None)
    assert metrics["reproduced"] in (True, False, None) and "text-fox" in metrics["missing"]
    assert sorted(metrics["organisms"]) == ["fox-passkey", "transformer-passkey"]


def test_fox_forgetting_criterion_needs_the_gap_beyond_two_standard_errors():
    from seqlens.studies import fox_forgetting as ff

    fox, ref = {"rise": 0.0, "rise_se": 0.05}, {"rise": 0.3, "rise_se": 0.05}
    assert ff.extrapolates(fox, ref)["holds"] is True  # gap 0.3 > 2·0.071
    assert ff.extrapolates(fox, {"rise": 0.1, "rise_se": 0.05})["holds"] is False  # 0.1 < 0.14
    assert ff.extrapolates(ref, fox)["holds"] is False  # FoX rising more never holds
    assert ff.extrapolates(fox, {"rise": 0.3, "rise_se": float("nan")})["holds"] is None  # one row: no SE


def test_zoology_state_floats_count_the_recurrent_state_or_the_whole_kv_cache():
    from seqlens.models import ModelConfig, build
    from seqlens.studies.zoology_mqar import state_floats

    toks = torch.arange(10) % 32
    mamba = build(ModelConfig(arch="mamba", vocab_size=32, d_model=16, n_layers=3, d_state=4, expand=2), seed=0)
    assert state_floats(mamba, toks) == 3 * 32 * 4  # layers x d_inner x d_state (the conv buffer is not state)
    gla = build(ModelConfig(arch="gla", vocab_size=32, d_model=16, n_layers=2, n_heads=2, d_key=8, d_value=16), seed=0)
    assert state_floats(gla, toks) == 2 * 2 * 4 * 8  # layers x heads x d_k/head x d_v/head
    attn = build(ModelConfig(arch="transformer", vocab_size=32, d_model=16, n_layers=2, n_heads=4, n_ctx=32), seed=0)
    assert state_floats(attn, toks) == 2 * 2 * 10 * 16  # layers x (K, V) x tokens read x d_model
    assert state_floats(attn, toks[:5]) == 2 * 2 * 5 * 16  # the cache grows with the sequence


def test_zoology_refuses_zero_batches():
    from seqlens.studies.zoology_mqar import accuracy

    with pytest.raises(ValueError, match="batches"):
        accuracy(None, 0, seed=0)


def test_zoology_judge_needs_a_monotone_rise_beyond_two_standard_errors():
    from seqlens.studies.zoology_mqar import judge

    def row(acc, n, se=0.01):
        return {"accuracy": acc, "state_floats": n, "se": se}
    results = {"a-n1": row(0.2, 100), "a-n2": row(0.3, 200), "a-n4": row(0.5, 400),   # rises
               "b-n1": row(0.3, 100), "b-n2": row(0.2, 200), "b-n4": row(0.6, 400),   # not monotone
               "c-n1": row(0.30, 100), "c-n2": row(0.31, 200), "c-n4": row(0.32, 400),  # within 2 SE
               "d-n1": row(0.1, 100), "d-n2": row(0.9, 200)}                          # too few sizes
    series = {k: [(int(n[-1]), n) for n in results if n.startswith(k)] for k in "abcd"}
    j = judge(series, results)
    assert set(j) == {"a", "b", "c"}
    assert j["a"]["rises"] and j["a"]["accuracy"] == [0.2, 0.3, 0.5]
    assert not j["b"]["rises"] and not j["b"]["monotone"]
    assert j["c"]["monotone"] and not j["c"]["rises"]
