"""`seqlens bench lrp` runs end to end on a short sequence (its timings are not checked: speed is
measured by running it, never asserted in tests; the memory check is)."""

import json

from seqlens.cli import BENCHMARKS, main


def test_bench_lrp_smoke_through_the_cli(tmp_path, capsys):
    assert BENCHMARKS["lrp"] == "bench_lrp"
    assert main(["bench", "lrp", "--smoke", "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["method"] for r in m["rows"]] == ["mambalrp", "gxi"] and m["seq_len"] == 64
    assert all(r["seconds"] > 0 and r["peak_bytes"] > 0 for r in m["rows"])
    # the MambaLRP rule set, like the plain forward, never allocates a [B, D, L, N] tensor
    assert m["bdln_bytes"] == 1 * 256 * 64 * 16 * 4 and m["no_bdln_tensor"] is True
    assert "ratio mambalrp / gxi" in capsys.readouterr().out
