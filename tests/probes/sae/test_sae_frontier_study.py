"""studies/sae_frontier.py end to end in its smoke mode (text-mamba, five architectures, two
sparsity settings each), and its Pareto frontier on hand-made points."""

from __future__ import annotations

import json
import math

import pytest

from seqlens.studies.sae_frontier import SMOKE_SWEEPS, frontier, main, spread


def test_frontier_keeps_the_pareto_optimal_points():
    pts = [{"l0": 1, "fvu": 0.5}, {"l0": 2, "fvu": 0.6}, {"l0": 3, "fvu": 0.2}, {"l0": 3, "fvu": 0.3},
           {"l0": 0.5, "fvu": 0.9}]
    assert frontier(pts) == [4, 0, 2]  # by L0; (2, 0.6) and (3, 0.3) are dominated


def test_spread_keeps_both_ends_of_the_grid():
    assert spread("k", [4, 8, 16, 32], 3) == ("k", [4, 16, 32])
    assert spread("k", [4, 8, 16, 32], 2) == ("k", [4, 32])
    assert spread("k", [4, 8, 16, 32], None) == ("k", [4, 8, 16, 32])
    with pytest.raises(ValueError, match="settings"):
        spread("k", [4, 8], 0)


@pytest.mark.slow  # ~30 s of CPU: eleven tiny SAEs trained and evaluated with the model
def test_sae_frontier_smoke_writes_report_and_metrics(tmp_path, capsys):
    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "plotly" in html and "SAE frontier" in html
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {"question", "measured", "settings", "models", "all_finite"} <= set(m) and m["all_finite"]
    r = m["models"]["text-mamba"]
    assert r["arch"] == "mamba" and r["hook"] == "blocks.1.hook_resid_post"
    assert set(r["points"]) == set(SMOKE_SWEEPS)
    for sae_arch, points in r["points"].items():
        knob, values = SMOKE_SWEEPS[sae_arch]
        assert [p["value"] for p in points] == values and all(p["knob"] == knob for p in points)
        for p in points:
            assert p["fvu"] >= 0 and math.isfinite(p["ce_recovered"]) and p["ce_recovered"] <= 1 + 1e-6
            if sae_arch in ("topk", "matching_pursuit"):  # at most k codes per sample at inference
                assert 0 < p["l0"] <= p["value"] + 1e-6
        assert r["frontier"][sae_arch] == frontier(points)
    assert "matching_pursuit" in capsys.readouterr().out
    # deterministic for the seed: the TopK points again, alone
    assert main(["--smoke", "--archs", "topk", "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())["models"]["text-mamba"]["points"]["topk"]
    strip = lambda pts: [{k: v for k, v in p.items() if k != "seconds"} for p in pts]  # noqa: E731
    assert strip(again) == strip(r["points"]["topk"])
