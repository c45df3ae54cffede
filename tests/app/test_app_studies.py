"""The Studies page with streamlit's AppTest: every registered study listed with its claim, a run
written by the study scaffold read back (result, verdict, notes, missing organisms, report), a
folder without runs, and a broken metrics.json reported as a message."""

from __future__ import annotations

import plotly.graph_objects as go
from apptest_helpers import errors, no_problem, open_app

from seqlens.studies._report import Study, parser
from seqlens.studies.registry import STUDIES


def write_run(folder, name: str) -> dict:
    args = parser(name, name).parse_args(["--out", str(folder / name)])
    study = Study(name, STUDIES[name].paper, STUDIES[name].claim, args)
    study.missing.append("copy-fox")
    study.note("a note from the run")
    study.figure(go.Figure(go.Scatter(y=[1, 2, 3])), "a figure")
    return study.finish({"reach": {"copy-transformer": 10}}, False, "copy-transformer reaches 10")


def test_studies_page_lists_every_study_and_opens_a_run(tmp_path):
    write_run(tmp_path, "copying")
    at = open_app("studies")
    at.text_input(key="w_studies_dir").set_value(str(tmp_path)).run()
    no_problem(at)
    assert at.title[0].value == "Studies"
    table = at.dataframe[0].value
    assert list(table["study"]) == list(STUDIES)
    assert dict(zip(table["study"], table["result"]))["copying"] == "not reproduced"
    assert dict(zip(table["study"], table["result"]))["retrieval_heads"] == "not run"
    at.selectbox(key="w_studies_name").set_value("copying").run()
    no_problem(at)
    text = " ".join(m.value for m in at.markdown)
    assert STUDIES["copying"].claim in text and "copy-transformer reaches 10" in text
    assert any("a note from the run" in c.value for c in at.caption)
    assert any("copy-fox" in w.value for w in at.warning)
    assert at.json  # the metrics


def test_a_study_without_a_run_and_a_broken_metrics_file(tmp_path):
    (tmp_path / "sinks_act").mkdir()
    (tmp_path / "sinks_act" / "metrics.json").write_text("{not json")
    at = open_app("studies")
    at.text_input(key="w_studies_dir").set_value(str(tmp_path)).run()
    assert any("sinks_act" in e and "not valid JSON" in e for e in errors(at))
    at.selectbox(key="w_studies_name").set_value("copying").run()
    assert any("No run of copying" in i.value for i in at.info)
