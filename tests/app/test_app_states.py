"""The States page with streamlit's AppTest: state collapse (chart with the training length, the
collapse flag and rule, a mitigation's before / after), capacity (passkey heatmap, the fit across
the passkey organisms), gate saturation and interpretable cells (highlighted text), and clear
"not applicable" messages on an attention model. Settings are tiny so the file runs in well under
a minute on CPU."""

from __future__ import annotations

from apptest_helpers import errors, figure_text, keyed_charts, no_problem, open_app

RECURRENT = "passkey-mamba-n4"  # Mamba, byte-level, trained at L = 64: fast on CPU
TEXT = "text-mingru"             # minGRU on stdlib text: gates and interpretable cells


def click(at, key: str):
    at.button(key=key).click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def progress_texts(at) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def test_states_page_on_a_recurrent_organism():
    at = open_app("states", model=RECURRENT)
    no_problem(at)
    assert at.title[0].value == "States"
    assert [t.label for t in at.tabs] == ["Collapse", "Capacity", "Gates"]
    keys = {b.key for b in at.button}
    assert {"states_collapse_run", "states_pk_run", "states_fit_run", "states_lag_run", "states_gate_run",
            "states_cells_run"} <= keys
    assert set(keyed_charts(at)) == {"state_memory"}  # only the cheap memory figure before any button
    held = keyed_charts(at)["state_memory"]["data"][0]["y"]
    assert len(set(held)) == 1 and held[0] > 0  # a fixed-size state: the same size after every chunk
    assert at.number_input(key="w_states_n_tokens").value == 4096
    assert not any(t.disabled for t in at.toggle if t.key.startswith("w_states_mit_"))  # every mitigation applies
    assert at.button(key="states_mit_run").disabled  # ... once one is switched on


def test_states_page_on_an_attention_model_says_not_applicable():
    at = open_app("states", model="induction-attn2")
    no_problem(at)
    texts = [i.value for i in at.info] + [c.value for c in at.caption]
    assert any(t.startswith("Not applicable: gate_saturation needs a mixer with gates") for t in texts)
    assert any(t.startswith("Not applicable: normalize_states needs a fixed-size recurrent state") for t in texts)
    assert any(t.startswith("Not applicable: forget_more needs") for t in texts)
    assert any("need a byte-level model" in t for t in texts)  # interpretable cells
    assert any("Passkey prompts need a byte-level or tokenized model" in t for t in texts)
    assert at.toggle(key="w_states_mit_normalize_states").disabled
    assert not at.toggle(key="w_states_mit_state_window").disabled  # trims the KV cache
    assert "states_gate_run" not in {b.key for b in at.button}
    fig = keyed_charts(at)["state_memory"]  # useful by default: the KV cache grows with every token
    x, held = fig["data"][0]["x"], fig["data"][0]["y"]
    import seqlens

    cfg = seqlens.load("induction-attn2").cfg  # k and v of d_model floats per token and layer
    assert held[0] == 0 and all(h == 2 * cfg.n_layers * cfg.d_model * n for n, h in zip(x, held))


def test_collapse_chart_flag_rule_and_mitigation_before_after():
    at = open_app("states", model=RECURRENT)
    at.number_input(key="w_states_n_tokens").set_value(1024).run()
    click(at, "states_collapse_run")
    no_problem(at)
    fig = keyed_charts(at)["collapse_figure"]
    assert figure_text(fig).startswith("state collapse (train_len 64")
    assert any(s.get("x0") == 64 and s.get("line", {}).get("dash") == "dash" for s in fig["layout"]["shapes"])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Collapsed"] in {"yes", "no", "—"}
    assert any(c.value.startswith("Rule (loss_margin = ") for c in at.caption)  # the rule text
    assert any(t.startswith("state collapse: done") for t in progress_texts(at))

    at.toggle(key="w_states_mit_forget_more").set_value(True).run()
    assert any("Run with mitigations" in i.value for i in at.info)
    click(at, "states_mit_run")
    no_problem(at)
    comp = keyed_charts(at)["collapse_compare"]
    assert "before:" in figure_text(comp) and "after:" in figure_text(comp)
    names = {t.get("name", "") for t in comp["data"]}
    assert any(n.startswith("before") for n in names) and any(n.startswith("after") for n in names)
    frame = next(d.value for d in at.dataframe if "run" in d.value.columns)
    assert list(frame["run"]) == ["before", "after"]
    assert any("with forget_more" in t for t in progress_texts(at))
    at.run()  # the results stay (cached) without pressing again
    assert {"collapse_figure", "collapse_compare"} <= set(keyed_charts(at))


def test_passkey_heatmap_and_capacity_fit():
    at = open_app("states", model=RECURRENT)
    at.multiselect(key="w_states_pk_lengths").set_value([64]).run()
    at.multiselect(key="w_states_pk_depths").set_value([0.5]).run()
    at.number_input(key="w_states_pk_trials").set_value(1).run()
    click(at, "states_pk_run")
    no_problem(at)
    fig = keyed_charts(at)["passkey_figure"]
    assert fig["data"][0]["type"] == "heatmap"
    assert figure_text(fig).startswith("passkey retrieval passkey-mamba-n4")

    at.multiselect(key="w_states_fit_lengths").set_value([64, 256, 1024]).run()
    at.multiselect(key="w_states_fit_depths").set_value([0.5]).run()
    at.number_input(key="w_states_fit_trials").set_value(1).run()
    click(at, "states_fit_run")
    charts = keyed_charts(at)
    msgs = errors(at)
    assert "fit_sweep_passkey-mamba-n4" in charts and "fit_sweep_passkey-mamba-n16" in charts
    # the fit, or the library's reason why these sweeps cannot be fitted (censored T) as a message
    assert "capacity_fit" in charts or any(m.startswith("Capacity fit: sweeps:") for m in msgs), msgs
    # one fit per training length: the length-64 series by default (the open organism's own), none of -t128
    assert not any(k.endswith("-t128") for k in charts if k.startswith("fit_sweep_"))
    series = at.selectbox(key="w_states_fit_series")
    assert series.value == 64 and "128" in series.options  # passkey-mamba-n2-t128 / -n4-t128 are built


def test_gate_saturation_and_interpretable_cells():
    at = open_app("states", model=TEXT)
    click(at, "states_gate_run")
    no_problem(at)
    charts = keyed_charts(at)
    assert figure_text(charts["gate_figure"]).startswith("Gate saturation (text-mingru)")
    assert "gate_units" in charts
    frame = next(d.value for d in at.dataframe if "gate" in d.value.columns)
    assert set(frame["gate"]) == {"z", "1-z"}

    at.number_input(key="w_states_cells_bytes").set_value(1024).run()
    click(at, "states_cells_run")
    no_problem(at)
    (view,) = [h.proto.body for h in at.get("html")]
    assert "<pre" in view and "background-color:rgba(" in view and "top unit for" in view
    at.selectbox(key="w_states_cells_feature").set_value("indent").run()
    units = at.selectbox(key="w_states_cells_unit").options
    assert len(units) == 5
    other = units[1].split(" · ")[0]
    at.selectbox(key="w_states_cells_unit").set_value(other).run()
    no_problem(at)
    (view,) = [h.proto.body for h in at.get("html")]
    assert f"<b>{other}</b>" in view


def test_lag_decoding_curve():
    at = open_app("states", model=TEXT)
    at.number_input(key="w_states_lag_max").set_value(2).run()
    at.number_input(key="w_states_lag_seqs").set_value(16).run()
    click(at, "states_lag_run")
    no_problem(at)
    fig = keyed_charts(at)["lag_figure"]
    assert figure_text(fig).startswith("lag decoding text-mingru (state)")
    assert fig["data"][0]["x"] == [0, 1, 2]
    assert any(t.startswith("lag decoding: done") for t in progress_texts(at))
    assert any("max_features = 64" in c.value for c in at.caption)  # the page's default: 64 state PCs


def test_library_errors_become_messages():
    at = open_app("states", model="tiny-gpt2")  # learned positions, n_ctx 512: cannot stream past it
    no_problem(at)
    at.number_input(key="w_states_n_tokens").set_value(1024).run()
    click(at, "states_collapse_run")
    msgs = errors(at)
    assert any(m.startswith("State collapse: n_tokens: 1024 exceeds n_ctx=512") for m in msgs), msgs
    assert "collapse_figure" not in keyed_charts(at)
    at.run()  # the failure is remembered (shown again, not recomputed) until the settings change
    assert any(m.startswith("State collapse: n_tokens: 1024") for m in errors(at))
    at.number_input(key="w_states_n_tokens").set_value(512).run()
    assert not errors(at) and any("Run collapse probe" in i.value for i in at.info)


def test_interpretable_cells_on_the_default_own_text():
    """Issue 15 item 8: the default code snippet is shorter than the old 100-byte minimum of
    "Bytes shown" (min_value 100 > max_value 51 raised); the bounds now follow the text."""
    at = open_app("states", model=TEXT)
    at.radio(key="w_states_cells_source").set_value("Your Python code").run()
    click(at, "states_cells_run")
    no_problem(at)
    n = len(at.text_area(key="w_states_cells_text").value.encode())
    shown = at.number_input(key="states_cells_shown")
    assert shown.value == shown.max == n and shown.min <= n
    (view,) = [h.proto.body for h in at.get("html")]
    assert "<pre" in view and "top unit for" in view
    at.text_area(key="w_states_cells_text").input("x = 1\n" * 800).run()  # longer text: 100..3000 again
    click(at, "states_cells_run")
    no_problem(at)
    shown = at.number_input(key="states_cells_shown")
    assert (shown.min, shown.value, shown.max) == (100, 3000, 4800)
    at.text_area(key="w_states_cells_text").input("x = 1\n" * 20000).run()  # 120,000 bytes: refused, not run
    click(at, "states_cells_run")
    assert errors(at) == ["Interpretable cells: text: 120,000 bytes; at most 65,536 bytes are analysed here "
                          "(use seqlens.probes.interpretable_cells in Python for longer texts)"]


def test_states_page_defaults_on_a_model_with_a_long_context(tmp_path, monkeypatch):
    """A checkpoint whose n_ctx (its training length here) exceeds the page's 65,536-token bound: the
    state window's default stays within its bounds instead of breaking the page."""
    import seqlens
    from seqlens.models import ModelConfig

    cfg = ModelConfig(arch="mamba", vocab_size=256, d_model=16, n_layers=1, d_state=4, n_ctx=200_000)
    seqlens.build(cfg, seed=0).save(tmp_path / "long")
    monkeypatch.setenv("SEQLENS_MODEL_DIRS", str(tmp_path))
    at = open_app()
    at.radio(key="w_model_source").set_value("Local directory").run()
    at.text_input(key="w_model_dir").input(str(tmp_path / "long")).run()
    at.switch_page("views/states.py").run()
    no_problem(at)
    assert at.number_input(key="w_states_window").value == 65536
