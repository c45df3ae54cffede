"""Smoke test of ``seqlens bench peers`` with tiny shapes: the script runs end to end, every row
is a ratio of two positive times, and the peers really ran the same weights (logits agree with
the TransformerLens bridge and Hugging Face; our Mamba pattern equals TL's effective attention).
No timing is asserted."""

import json
import math

import pytest

pytest.importorskip("transformer_lens")
pytest.importorskip("nnsight")


@pytest.mark.slow
def test_bench_peers_smoke(tmp_path, monkeypatch):
    from seqlens.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["bench", "peers", "--smoke", "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    whats = [r["what"] for r in m["rows"]]
    for needle in ("run_with_cache vs TL bridge", "hook overhead", "nnsight", "Mamba forward", "Mamba pattern",
                   "SAE train topk", "LRP"):
        assert any(needle in w for w in whats), (needle, whats)
    for r in m["rows"]:
        assert r["seqlens_s"] > 0 and r["peer_s"] > 0 and math.isclose(r["ratio"], r["peer_s"] / r["seqlens_s"],
                                                                         rel_tol=1e-6), r
    gpt2, mamba = m["checks"]["gpt2"], m["checks"]["mamba"]
    assert gpt2["max_abs_logit_diff_vs_bridge"] < 1e-4 and gpt2["max_abs_logit_diff_vs_hf"] < 1e-4
    assert mamba["max_abs_pattern_diff_vs_tl"] < 1e-4 * max(mamba["max_abs_pattern"], 1e-3)
    assert m["meta"]["versions"]["transformer-lens"].startswith("4")
