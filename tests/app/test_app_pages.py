"""Every dashboard page with streamlit's AppTest: renders without exception, has its widgets,
runs its analyses, and turns bad input into a message (never a traceback).

Pages are addressed as a user reaches them: ``AppTest.from_file("app/main.py")`` (the
``st.navigation`` entry point, whose default page is Model), then ``switch_page("views/<page>.py")``.
"""

from __future__ import annotations

import os

import pytest

from apptest_helpers import chart_titles, charts, errors, figure_text, iframes, keyed_charts, no_problem, open_app

MODEL = "induction-attn2"  # the default organism: 2-layer attention-only transformer, task vocabulary


# ----------------------------------------------------------------------------- navigation / model


def test_model_page_is_default_and_shows_summary():
    at = open_app()
    no_problem(at)
    assert at.selectbox(key="w_zoo_name").value == MODEL  # model choice lives in the sidebar
    assert at.radio(key="w_model_source").value == "Zoo organism"
    assert MODEL in at.title[0].value
    labels = [m.label for m in at.metric]
    assert {"Architecture", "Parameters", "Layers × heads"} <= set(labels)
    assert any(label.startswith("Training metric") for label in labels)
    frames = [d.value for d in at.dataframe]
    hooks = next(f for f in frames if "hook" in f.columns)
    assert "blocks.0.mixer.hook_pattern" in set(hooks["hook"])
    training = next(f for f in frames if "task / data" in set(f.get("field", [])))
    assert "data: seq_len" in set(training["field"])  # one row per data argument (a dict in one cell was cut)


def test_every_page_is_registered_with_a_url_path():
    at = open_app()
    paths = {info.get("url_pathname") for info in at._registered_pages.values()}
    assert {"attention", "heads", "sinks", "states", "features", "attribution"} <= paths
    for page in ("attention", "heads", "sinks", "states", "features", "attribution", "model"):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_bad_directory_shows_a_message(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("SEQLENS_MODEL_DIRS", str(tmp_path))  # inside the configured root: details are shown
    target = {"missing": tmp_path / "nope", "empty": tmp_path, "file": tmp_path / "x.txt"}[kind]
    if kind == "file":
        target.write_text("not a model")
    at = open_app()
    at.radio(key="w_model_source").set_value("Local directory").run()
    at.text_input(key="w_model_dir").input(str(target)).run()
    msgs = errors(at)
    assert msgs and "Could not open model" in msgs[0]
    expected = {"missing": "does not exist", "empty": "config.json", "file": "not a checkpoint directory"}[kind]
    assert expected in msgs[0]
    at.switch_page("views/attention.py").run()  # other pages say the same, no traceback
    assert errors(at)


def test_local_checkpoint_directory_opens(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQLENS_MODEL_DIRS", str(tmp_path))
    import seqlens
    from seqlens.models import zoo

    seqlens.build(zoo.PRESETS["tiny-gpt2"][0], seed=0).save(tmp_path / "my-model")
    at = open_app()
    at.radio(key="w_model_source").set_value("Local directory").run()
    at.text_input(key="w_model_dir").input(str(tmp_path / "my-model")).run()
    no_problem(at)
    assert "my-model" in at.title[0].value
    at.switch_page("views/attention.py").run()
    no_problem(at)
    assert at.radio(key="w_prompt_mode").options == ["Free text", "Token ids"]  # byte-level, no recipe
    (tmp_path / "other").mkdir()
    monkeypatch.setenv("SEQLENS_MODEL_DIRS", str(tmp_path / "other"))  # the loaded model is cached, yet
    at.run()                                                             # the roots are checked on every use
    assert errors(at) == [f"Could not open model {str(tmp_path / 'my-model')!r}: {str(tmp_path / 'my-model')!r} "
                          f"is not under a configured model directory ({os.path.realpath(tmp_path / 'other')})"]


def open_directory(text: str):
    at = open_app()
    at.radio(key="w_model_source").set_value("Local directory").run()
    at.text_input(key="w_model_dir").input(text).run()
    return at


def test_directory_picker_opens_nothing_without_configured_roots(tmp_path, monkeypatch):
    """Issue 15 item 7: by default only the zoo opens; a path gets the same message whether it exists."""
    import seqlens
    from seqlens.models import zoo

    monkeypatch.delenv("SEQLENS_MODEL_DIRS", raising=False)
    seqlens.build(zoo.PRESETS["tiny-gpt2"][0], seed=0).save(tmp_path / "real")
    msgs = [errors(open_directory(str(p)))[0] for p in (tmp_path / "real", tmp_path / "missing")]
    assert all("no local model directories are configured" in m and "--model-dir" in m for m in msgs), msgs
    assert msgs[0].replace("real", "X") == msgs[1].replace("missing", "X")


def test_directory_picker_refuses_paths_outside_the_roots_alike(tmp_path, monkeypatch):
    import seqlens
    from seqlens.models import zoo

    root, outside = tmp_path / "models", tmp_path / "elsewhere"
    root.mkdir()
    seqlens.build(zoo.PRESETS["tiny-gpt2"][0], seed=0).save(outside / "secret")
    (root / "link").symlink_to(outside / "secret")  # a symlink out of the root does not escape it
    monkeypatch.setenv("SEQLENS_MODEL_DIRS", str(root))
    probes = {"exists": str(outside / "secret"), "missing": str(outside / "nothing"),
              "dotdot": str(root / ".." / "elsewhere" / "secret"), "link": str(root / "link"),
              "etc": "/etc", "relative": "../elsewhere/secret"}
    for what, text in probes.items():
        msgs = errors(open_directory(text))
        # the same sentence for every path outside: nothing says whether it exists or what it is
        assert msgs == [f"Could not open model {text!r}: {text!r} is not under a configured model directory "
                        f"({os.path.realpath(root)})"], (what, msgs)
    # "~name" is not expanded (it would tell whether user "name" exists): a name under the root
    assert errors(open_directory("~root/x")) == ["Could not open model '~root/x': directory '~root/x' does not exist"]
    seqlens.build(zoo.PRESETS["tiny-gpt2"][0], seed=0).save(root / "mine")
    at = open_directory("mine")  # relative to the root
    no_problem(at)
    assert "mine" in at.title[0].value


# ----------------------------------------------------------------------------- attention


def test_attention_page_task_sample_heatmaps_and_hover_view():
    at = open_app("attention")
    no_problem(at)
    assert at.radio(key="w_prompt_mode").value == "Task sample"  # task vocabulary: no free text
    assert "Free text" not in at.radio(key="w_prompt_mode").options
    assert [s.label for s in at.selectbox if s.key == "w_attn_layer"]
    (view,) = iframes(at)
    assert '"BOS"' in view and "mouseenter" in view  # token labels with special names; hover logic
    assert not chart_titles(at)  # lazy tabs: the heatmaps are drawn only when their tab is open
    show_heatmaps(at)
    assert any("Layer 0" in t for t in chart_titles(at)) and not iframes(at)
    at.selectbox(key="w_attn_layer").set_value(1).run()
    no_problem(at)
    assert any("Layer 1" in t for t in chart_titles(at))


def show_heatmaps(at):
    """Open the Attention page's Heatmaps tab (what a click on it does)."""
    at.session_state["attn_view"] = "Heatmaps"
    at.run()
    no_problem(at)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("1, 2, x", "not an integer"),
    ("1, 2, 999", "outside the vocabulary"),
    (", ".join(["1"] * 129), "n_ctx=128"),
])
def test_attention_bad_token_ids_show_a_message(text, message):
    at = open_app("attention")
    at.radio(key="w_prompt_mode").set_value("Token ids").run()
    at.text_input(key="w_prompt_ids").input(text).run()
    msgs = errors(at)
    assert msgs and message in msgs[0], msgs
    assert not at.get("plotly_chart")


def test_attention_free_text_on_a_byte_model():
    at = open_app("attention", model="tiny-gpt2")  # learned positions, n_ctx 512
    assert at.radio(key="w_prompt_mode").value == "Free text"
    at.text_area(key="w_prompt_text").input("").run()
    assert "empty" in errors(at)[0]
    at.text_area(key="w_prompt_text").input("a" * 600).run()
    assert "n_ctx=512" in errors(at)[0]
    at.text_area(key="w_prompt_text").input("hi there\nhi").run()
    no_problem(at)
    (view,) = iframes(at)
    assert "␣" in view and "↵" in view  # whitespace shown visibly


def test_attention_implicit_attention_of_a_recurrent_model():
    at = open_app("attention", model="tiny-mamba")
    no_problem(at)
    show_heatmaps(at)
    assert at.toggle(key="attn_norm").value is True
    assert any("implicit attention" in t for t in chart_titles(at))
    at.toggle(key="attn_norm").set_value(False).run()  # raw signed α
    no_problem(at)
    assert any(c["data"][0].get("zmid") == 0 for c in charts(at))


# ----------------------------------------------------------------------------- heads


def finder_charts(at) -> dict[str, dict]:
    """``{finder name: its HeadScores figure}``."""
    return {k.removeprefix("finder_"): fig for k, fig in keyed_charts(at).items() if k.startswith("finder_")}


def run_finders(at):
    at.button(key="heads_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_heads_page_runs_every_registered_finder():
    from seqlens.circuits import FINDERS

    at = open_app("heads")
    no_problem(at)
    assert at.multiselect(key="w_heads_finders").value == list(FINDERS)  # generic over the registry
    assert not finder_charts(at) and any("Run finders" in i.value for i in at.info)  # runs on request
    run_finders(at)
    drawn = finder_charts(at)
    failed = [m for m in errors(at) if m.startswith("Finder ")]
    for name in FINDERS:  # each finder gives its chart or names itself in a message
        assert name in drawn or any(m.startswith(f"Finder {name}:") for m in failed), (name, failed)
    for name in ("previous_token", "duplicate_token", "induction"):
        assert drawn[name]["data"][0]["type"] == "heatmap"
        assert figure_text(drawn[name]).startswith(f"{name} scores")
    assert at.get("progress")
    assert "heads_stop" not in {b.key for b in at.button}  # the Stop button lives only while finders run


def test_heads_second_run_keeps_finished_finders_and_runs_the_rest(monkeypatch):
    """What a stopped run leaves: finders already done are not run again, the rest are."""
    from seqlens.app import analyses

    at = open_app("heads")
    at.multiselect(key="w_heads_finders").set_value(["induction"]).run()
    run_finders(at)
    calls: list[str] = []
    real = analyses.finder_scores
    monkeypatch.setattr(analyses, "finder_scores", lambda key, name, data: calls.append(name) or real(key, name, data))
    at.multiselect(key="w_heads_finders").set_value(["induction", "previous_token"]).run()
    run_finders(at)
    no_problem(at)
    assert calls == ["previous_token"] and set(finder_charts(at)) == {"induction", "previous_token"}


def test_heads_selected_head_shows_its_pattern():
    at = open_app("heads")
    at.multiselect(key="w_heads_finders").set_value(["induction"]).run()
    run_finders(at)
    no_problem(at)
    assert list(finder_charts(at)) == ["induction"]
    options = at.selectbox(key="w_heads_head").options
    target = options[-1].split(" ")[0]  # the lowest-ranked head
    at.selectbox(key="w_heads_head").set_value(target).run()
    no_problem(at)
    assert list(finder_charts(at)) == ["induction"]  # results stay without running again
    assert target in figure_text(keyed_charts(at)["head_pattern"])  # the head's pattern heatmap
    assert any(target in v for v in iframes(at))


def test_heads_finder_on_the_prompt_and_on_default_data():
    at = open_app("heads")
    at.multiselect(key="w_heads_finders").set_value(["previous_token"]).run()
    at.radio(key="w_heads_source").set_value("Prompt").run()
    run_finders(at)
    no_problem(at)
    assert list(finder_charts(at)) == ["previous_token"]
    at.radio(key="w_prompt_mode").set_value("Token ids").run()
    at.text_input(key="w_prompt_ids").input("").run()
    assert "empty" in errors(at)[0]
    at.radio(key="w_heads_source").set_value("Finder defaults").run()
    assert not finder_charts(at)  # new data: not run yet
    run_finders(at)
    no_problem(at)
    assert list(finder_charts(at)) == ["previous_token"]


def test_heads_causal_check_with_progress():
    at = open_app("heads")
    at.multiselect(key="w_heads_finders").set_value(["induction"]).run()
    run_finders(at)
    assert at.multiselect(key="w_causal_heads").value == [at.selectbox(key="w_heads_head").value]
    other = at.selectbox(key="w_heads_head").options[1].split(" ")[0]  # options show "L1H1 · induction 0.68"
    at.selectbox(key="w_heads_head").set_value(other).run()
    assert at.multiselect(key="w_causal_heads").value == [other]  # follows the selected head
    at.number_input(key="w_causal_n").set_value(2).run()
    (button,) = [b for b in at.button if b.label == "Run causal check"]
    assert not button.disabled
    button.click().run()
    no_problem(at)
    assert any("Causal check" in t for t in chart_titles(at))
    labels = [m.label for m in at.metric]
    assert any(label.startswith("Baseline") for label in labels)
    frame = at.dataframe[-1].value
    assert list(frame["condition"]) == ["baseline", "target", "random", "random"]


def test_heads_causal_check_disabled_without_a_recipe():
    at = open_app("heads", model="tiny-transformer")
    no_problem(at)
    assert at.multiselect(key="w_causal_heads").value == ["L0H0"]  # available before any finder ran
    (button,) = [b for b in at.button if b.label == "Run causal check"]
    assert button.disabled
    assert any("no training recipe" in i.value for i in at.info)


# ----------------------------------------------------------------------------- sinks


def test_sinks_page_scores_and_calibration():
    at = open_app("sinks")
    no_problem(at)
    titles = chart_titles(at)
    assert any(t.startswith("attention sinks") for t in titles)  # SinkScores.figure
    assert any("attention received" in t for t in titles)        # r(j) of the chosen head
    frame = next(d.value for d in at.dataframe if "hidden_sinks" in d.value.columns)
    assert len(frame) == 2 * 4
    chosen = at.multiselect(key="w_sinks_calib_heads").value
    assert 1 <= len(chosen) <= 2
    with_hidden = [hid for hid, sinks in zip(frame["head_id"], frame["hidden_sinks"]) if sinks is not None and len(sinks)]
    if with_hidden:  # the default heads to calibrate are those with hidden sinks
        assert set(chosen) <= set(with_hidden)
    assert "calib_patterns" not in keyed_charts(at)  # calibration runs on request (the page opens fast)
    at.button(key="sinks_calib_run").click().run()
    patterns = figure_text(keyed_charts(at)["calib_patterns"])
    assert f"{chosen[0]} before" in patterns and f"{chosen[0]} after" in patterns
    metrics = [m.label for m in at.metric]
    assert any(label.endswith("before") for label in metrics)
    assert any("after calibrating" in label for label in metrics)
    at.slider(key="w_sinks_beta").set_value(1.0).run()  # β = 1 keeps every sink: nothing changes
    at.button(key="sinks_calib_run").click().run()
    no_problem(at)
    (after,) = [m for m in at.metric if "after calibrating" in m.label]
    assert after.value == [m for m in at.metric if m.label.endswith("before")][0].value


def test_sinks_page_on_a_recurrent_model_explains_no_calibration():
    at = open_app("sinks", model="tiny-mamba")
    assert not at.exception
    assert any(t.startswith("attention sinks") for t in chart_titles(at))
    assert any("nothing to calibrate" in i.value for i in at.info)


# ----------------------------------------------------------------------------- Hugging Face directory


@pytest.fixture
def hf_dir(tmp_path, monkeypatch):
    """A tiny GPT-2 in Hugging Face format with a byte-level BPE tokenizer, both built offline."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SEQLENS_MODEL_DIRS", str(tmp_path))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the cat sat on the mat"] * 20, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok)
    cfg = transformers.GPT2Config(vocab_size=len(fast), n_positions=32, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "hf-gpt2", safe_serialization=True)
    fast.save_pretrained(tmp_path / "hf-gpt2")
    return tmp_path / "hf-gpt2"


def test_hugging_face_directory_with_tokenizer(hf_dir):
    at = open_app()
    at.radio(key="w_model_source").set_value("Local directory").run()
    at.text_input(key="w_model_dir").input(str(hf_dir)).run()
    no_problem(at)
    assert "hf-gpt2" in at.title[0].value
    at.switch_page("views/attention.py").run()
    assert at.radio(key="w_prompt_mode").options == ["Free text", "Token ids"]
    at.text_area(key="w_prompt_text").input("the cat sat on the mat").run()
    no_problem(at)
    (view,) = iframes(at)
    assert '"the"' in view and '"␣cat"' in view  # tokenizer tokens as labels, spaces visible
    at.text_area(key="w_prompt_text").input("the cat " * 40).run()  # 80 tokens > n_positions 32
    assert "n_ctx=32" in errors(at)[0]
