"""The Attribution page with streamlit's AppTest: relevance-highlighted tokens, the per-layer heat map
and the conservation value on an attention and a recurrent organism, token flipping on request with
tiny settings, and a clear message for a bad prompt."""

from __future__ import annotations

import pytest
from apptest_helpers import download_keys, errors, figure_text, keyed_charts, method_cited, no_problem, open_app

ATTENTION = "induction-attn2"
RECURRENT = "passkey-mamba-n4"


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


@pytest.mark.parametrize("model,rule_set", [(ATTENTION, "attnlrp"), (RECURRENT, "mambalrp")])
def test_attribution_page_renders_relevance_hooks_and_conservation(model, rule_set):
    at = open_app("attribution", model=model)
    no_problem(at)
    assert at.title[0].value == "Attribution"
    charts = keyed_charts(at)
    assert figure_text(charts["lrp_hooks_figure"]).startswith(f"{rule_set}: relevance per hook")
    n_layers = len(charts["lrp_hooks_figure"]["data"][0]["y"])
    assert charts["lrp_hooks_figure"]["data"][0]["y"] == [f"blocks.{l}.hook_resid_post" for l in range(n_layers)]
    assert float(metric(at, "Conservation Σ relevance / logit"))  # a finite number, shown
    assert any(f"rule set that ran: **{rule_set}**" in c.value for c in at.caption)
    assert "lrp_flip_figure" not in charts  # flipping runs only on its button
    assert "docs/methods.md §6" in method_cited(at)
    settings = [c.value for c in at.caption if c.value.startswith("Computed on:")]
    assert settings and f"method = {rule_set}" in settings[0], settings  # the Result's settings under the figure
    assert {"dl_lrp_figure_lrp_figure.html", "dl_lrp_figure_lrp_figure.json", "dl_lrp_figure_lrp_figure.csv",
            "dl_lrp_hooks_figure_lrp_hooks_figure.html"} <= download_keys(at), download_keys(at)


def test_baseline_without_hooks_says_so_and_target_can_be_chosen():
    at = open_app("attribution", model=RECURRENT)
    at.selectbox(key="w_lrp_method").set_value("ig").run()
    no_problem(at)
    assert any("Per-layer relevance is recorded for the LRP rule sets" in i.value for i in at.info)
    at.radio(key="w_lrp_target_kind").set_value("Token id").run()
    at.number_input(key="w_lrp_target").set_value(5).run()
    no_problem(at)
    assert any("explained logit of token 5 " in c.value for c in at.caption)


def test_token_flipping_button_draws_curves():
    at = open_app("attribution", model=RECURRENT)
    at.number_input(key="w_lrp_flip_rows").set_value(1).run()
    at.number_input(key="w_lrp_flip_steps").set_value(2).run()
    at.multiselect(key="w_lrp_flip_methods").set_value(["auto", "random"]).run()
    at.button(key="lrp_flip_run").click().run()
    no_problem(at)
    fig = keyed_charts(at)["lrp_flip_figure"]
    names = [t["name"] for t in fig["data"]]
    assert any(n.startswith("mambalrp MORF") for n in names) and any(n.startswith("random LERF") for n in names)
    assert len(fig["data"][0]["x"]) == 3  # steps + 1 fractions
    assert any("ΔA^F: mambalrp" in c.value and "Computed on:" in c.value for c in at.caption)
    assert {"dl_lrp_flip_figure_lrp_flip_figure.html", "dl_lrp_flip_figure_lrp_flip_figure.json"} <= download_keys(at)


def test_bad_prompt_shows_a_message():
    at = open_app("attribution", model=RECURRENT)
    at.radio(key="w_prompt_mode").set_value("Token ids").run()
    at.text_input(key="w_prompt_ids").set_value("1, 2, 99999").run()
    msgs = errors(at)
    assert msgs and "99999" in " ".join(msgs)
    assert "lrp_figure" not in keyed_charts(at)
