"""Two browser sessions on one model must not see each other's interventions (issue 15 item 3).

Session A runs an intervention (causal check, ACT calibration, a collapse mitigation) in a
thread and is held *inside* the library's context manager, hooks attached, while session B opens
the Attention page on the same model. B's patterns (and the cached entry every later visitor gets)
must equal those of a freshly loaded model, A must finish without error, and afterwards nothing may
be attached to the shared model or to either session's copy.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import numpy as np
import pytest

from apptest_helpers import keyed_charts, no_problem, open_app

WAIT = 240  # seconds A may be held / B may take (2 shared cores)


class Gate:
    """Wraps a library context manager: the first entry after :meth:`arm` signals ``inside`` and
    holds the caller there (hooks attached) until ``release``."""

    def __init__(self, original):
        self.original, self.armed = original, False
        functools.update_wrapper(self, original)  # keeps applies_to / needs: the app asks them first
        self.inside, self.release = threading.Event(), threading.Event()

    def arm(self) -> None:
        self.armed = True

    @contextlib.contextmanager
    def __call__(self, *args, **kwargs):
        with self.original(*args, **kwargs) as value:
            if self.armed:
                self.armed = False
                self.inside.set()
                self.release.wait(WAIT)
            yield value


def in_thread(fn):
    """Run ``fn()`` in a thread; returns ``join() -> (result, exception)``."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 — reported to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()

    def join():
        t.join(WAIT)
        assert not t.is_alive(), "session A did not finish"
        return out.get("value"), out.get("error")

    return join


def attention_in_b(model: str, ids: list[int], layer: int):
    """Session B: the Attention page's heatmaps ``[H, L, L]`` of ``ids`` at ``layer``, and its AppTest."""
    at = open_app("attention", model=model)
    at.radio(key="w_prompt_mode").set_value("Token ids").run()
    at.text_input(key="w_prompt_ids").input(", ".join(map(str, ids))).run()
    at.selectbox(key="w_attn_layer").set_value(layer).run()
    at.session_state["attn_view"] = "Heatmaps"  # the lazy Heatmaps tab
    at.run()
    no_problem(at)
    fig = keyed_charts(at)["attn_grid"]
    return np.array([plotly_array(trace["z"]) for trace in fig["data"]]), at


def plotly_array(value) -> np.ndarray:
    """An array of a plotly figure's JSON: a nested list, or ``{"dtype", "bdata", "shape"}``."""
    if isinstance(value, dict):
        import base64

        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = [int(n) for n in str(value.get("shape", len(flat))).split(",")]
        return flat.reshape(shape).astype(np.float64)
    return np.array(value, dtype=np.float64)


def fresh_patterns(model: str, ids: list[int], layer: int, normalisation: str) -> np.ndarray:
    import torch

    import seqlens
    from seqlens.circuits import layer_patterns

    m = seqlens.load(model).eval()
    return layer_patterns(m, torch.tensor([ids]), normalisation)[layer][0].numpy()


def assert_clean(model: str, *sessions) -> None:
    """Nothing attached to the shared model or to any session's copy."""
    from seqlens.app.state import SESSION_MODELS_KEY, pristine_model
    from seqlens.models.hooks import attached_hooks

    shared = pristine_model(f"zoo:{model}")._model
    assert attached_hooks(shared) == [] and all(not hp._forward_hooks for hp in shared.hook_dict.values())
    for at in sessions:
        for copy in at.session_state[SESSION_MODELS_KEY].values():
            assert copy is not shared and attached_hooks(copy) == []


def run_with_b(gate: Gate, session_a, model: str, ids: list[int], layer: int, normalisation: str):
    """Start A (which arms ``gate``), wait until it is inside the intervention, run B, release A."""
    import streamlit as st

    st.cache_data.clear()  # both sessions compute now (no entry left by an earlier test)
    join = in_thread(session_a)
    assert gate.inside.wait(WAIT), "session A never entered the intervention"
    try:
        got, b = attention_in_b(model, ids, layer)
    finally:
        gate.release.set()
    a, error = join()
    assert error is None, error
    np.testing.assert_allclose(got, fresh_patterns(model, ids, layer, normalisation), atol=1e-5)
    later, c = attention_in_b(model, ids, layer)  # a later visitor gets the cached entry: also right
    np.testing.assert_allclose(later, got, atol=0)
    assert_clean(model, a, b, c)
    return a


def test_causal_check_in_one_session_does_not_reach_another(monkeypatch):
    from seqlens.circuits import ablation

    gate = Gate(ablation.ablate_heads)
    monkeypatch.setattr(ablation, "ablate_heads", gate)

    def session_a():
        at = open_app("heads", model="induction-attn2")
        at.multiselect(key="w_causal_heads").set_value(["L0H0", "L0H1", "L0H2", "L0H3"]).run()
        at.number_input(key="w_causal_n").set_value(0).run()
        gate.arm()
        at.button[[b.label for b in at.button].index("Run causal check")].click().run()
        no_problem(at)
        assert "causal_figure" in keyed_charts(at)
        return at

    run_with_b(gate, session_a, "induction-attn2", [1, 5, 9, 3, 1, 5, 9, 3, 7], 1, "none")


def test_calibration_in_one_session_does_not_reach_another(monkeypatch):
    from seqlens.circuits import sinks

    gate = Gate(sinks.calibrate_sinks)
    monkeypatch.setattr(sinks, "calibrate_sinks", gate)

    def session_a():
        at = open_app("sinks", model="induction-attn2")
        gate.arm()  # the next calibration (of every layer-0 head) is held
        at.multiselect(key="w_sinks_calib_heads").set_value(["L0H0", "L0H1", "L0H2", "L0H3"]).run()
        at.button(key="sinks_calib_run").click().run()
        no_problem(at)
        assert "calib_patterns" in keyed_charts(at)
        return at

    run_with_b(gate, session_a, "induction-attn2", [2, 4, 6, 8, 2, 4, 6, 8, 3], 1, "none")


def test_mitigation_in_one_session_does_not_reach_another(monkeypatch):
    from seqlens.probes import collapse

    gate = Gate(collapse.forget_more)
    monkeypatch.setattr(collapse, "forget_more", gate)
    model = "passkey-mamba-n4"

    def session_a():
        at = open_app("states", model=model)
        at.number_input(key="w_states_n_tokens").set_value(128).run()
        at.toggle(key="w_states_mit_forget_more").set_value(True).run()
        at.slider(key="w_states_fm_c").set_value(4.0).run()
        gate.arm()
        at.button(key="states_mit_run").click().run()
        no_problem(at)
        assert "collapse_compare" in keyed_charts(at)
        return at

    run_with_b(gate, session_a, model, [72, 101, 108, 108, 111, 32, 72, 101, 108, 108, 111], 1, "abs_rows")
