"""studies/lrp_faithfulness.py end to end in its smoke mode (two organisms, two windows)."""

from __future__ import annotations

import json
import math

from seqlens.studies.lrp_faithfulness import METHODS, main


def test_lrp_faithfulness_smoke_writes_report_and_metrics(tmp_path, capsys):
    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "plotly" in html and "Token flipping" in html
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {"claim", "measured", "settings", "models", "reproduced", "reproduced_all"} <= set(m)
    assert set(m["models"]) == {"text-mamba", "passkey-mamba-n16"}
    for name, r in m["models"].items():
        assert r["lrp_method"] == "mambalrp"
        # "auto" is reported under the rule set that ran; every other method under its own name
        assert set(r["delta_af"]) == {"mambalrp"} | set(METHODS[1:])
        assert all(math.isfinite(v) for v in r["delta_af"].values())
        assert r["reproduced"] == (r["lrp_beats_gxi"] and r["lrp_beats_random"])
        assert r["n_sequences"] == 2
    assert "mambalrp" in capsys.readouterr().out
