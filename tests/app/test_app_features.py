"""The Features page with streamlit's AppTest: a shipped SAE on text-mamba (metrics, the feature
browser, a feature's contexts and figure), the message on a model without shipped SAEs, and
training a tiny SAE from the page (progress bars, then the new SAE selected)."""

from __future__ import annotations

from apptest_helpers import download_keys, errors, keyed_charts, method_cited, no_problem, open_app


def progress_texts(at) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def test_features_page_on_text_mamba_with_a_shipped_sae():
    at = open_app("features", model="text-mamba")
    at.number_input(key="w_features_n_seqs").set_value(2).run()
    no_problem(at)
    assert at.title[0].value == "Features"
    options = at.selectbox(key="w_features_sae").options
    assert "text-mamba/resid-l1" in options and "text-mamba/state-l1" in options
    at.selectbox(key="w_features_sae").set_value("shipped:text-mamba/resid-l1").run()
    no_problem(at)
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["FVU"]) < 0.5 and float(metrics["L0"]) > 0
    fig = keyed_charts(at)["features_report"]
    assert fig["layout"]["title"]["text"].startswith("feature ")
    assert any("<mark>" in m.value for m in at.markdown)  # the top contexts, activating token marked
    assert "docs/methods.md §8" in method_cited(at)
    assert sum(c.value.startswith("Computed on:") for c in at.caption) >= 2  # metrics and the feature report
    assert {"dl_sae_metrics_sae_metrics.json", "dl_feature_table_feature_table.json",
            "dl_features_report_features_report.html", "dl_features_report_features_report.json"} <= download_keys(at)


def test_a_model_without_shipped_saes_says_so():
    at = open_app("features", model="induction-attn2")
    no_problem(at)
    assert any(i.value.startswith("No shipped SAE for induction-attn2") for i in at.info)
    assert "w_features_sae" not in {s.key for s in at.selectbox}


def test_training_a_tiny_sae_on_the_page():
    at = open_app("features", model="induction-attn2")
    at.number_input(key="w_features_d_sae").set_value(16).run()
    at.number_input(key="w_features_k").set_value(2).run()
    at.number_input(key="w_features_steps").set_value(5).run()
    at.number_input(key="w_features_n_train").set_value(2).run()
    at.button(key="features_train").click().run()
    assert not errors(at)
    texts = progress_texts(at)
    assert any(t.startswith("training a topk SAE: done") for t in texts), texts
    key = at.selectbox(key="w_features_sae").value
    assert key.startswith("trained:zoo:induction-attn2|") and "|topk|16|2|5|" in key
    assert {m.label for m in at.metric} >= {"FVU", "L0", "Dead"}


def test_side_by_side_attention_and_recurrent_saes():
    at = open_app("features", model="text-mamba")
    at.number_input(key="w_features_n_seqs").set_value(2).run()
    assert at.selectbox(key="w_features_cmp_left").value == "text-transformer/resid-l1"
    assert at.selectbox(key="w_features_cmp_right").value == "text-mamba/resid-l1"
    at.button(key="features_compare").click().run()
    no_problem(at)
    charts = keyed_charts(at)
    assert {"features_cmp_text-transformer_resid-l1", "features_cmp_text-mamba_resid-l1"} <= set(charts)
    fvus = [f["value"][list(f["metric"]).index("fvu")] for f in (d.value for d in at.dataframe) if "metric" in f]
    assert len(fvus) == 2 and all(v < 0.5 for v in fvus)


def test_feature_browser_search_and_sort():
    """The browser lists every feature by frequency (most first, or least first); a search keeps
    exactly the rows whose top context or top tokens contain the query, and the feature picker
    offers only those."""
    at = open_app("features", model="text-mamba")
    at.number_input(key="w_features_n_seqs").set_value(2).run()
    no_problem(at)
    full = at.dataframe[0].value
    assert list(full.columns) == ["feature", "frequency", "max_activation", "top_tokens", "top_context"]
    assert full["frequency"].tolist() == sorted(full["frequency"], reverse=True)
    at.selectbox(key="w_features_sort").set_value("frequency, least first").run()
    assert at.dataframe[0].value["frequency"].tolist() == sorted(full["frequency"])
    context = next(c for c in full["top_context"] if sum(ch.isalpha() for ch in c) >= 3)
    query = next(context[i:i + 3] for i in range(len(context)) if context[i:i + 3].isalpha()).upper()
    at.text_input(key="w_features_search").set_value(query).run()
    no_problem(at)
    hits = at.dataframe[0].value
    want = full[full["top_context"].str.lower().str.contains(query.lower(), regex=False)
                | full["top_tokens"].str.lower().str.contains(query.lower(), regex=False)]
    assert 0 < len(hits) < len(full) and sorted(hits["feature"]) == sorted(want["feature"])
    assert set(at.selectbox(key="w_features_feature").options) <= {str(f) for f in hits["feature"]}
    at.text_input(key="w_features_search").set_value("no feature reads this ~~~").run()
    no_problem(at)
    assert len(at.dataframe[0].value) == 0
    assert any(i.value.startswith("No feature's top tokens or context contain") for i in at.info)
