"""The SAE benchmark runs end to end on tiny shapes (its numbers are not checked: speed is
measured by running it, never asserted in tests)."""

import json

from seqlens.studies import bench_sae


def test_bench_sae_smoke_writes_every_row(tmp_path):
    assert bench_sae.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    assert [r["bench"] for r in rows] == ["harvest blocks.1.hook_resid_post"] * 2 + ["train topk", "train standard"]
    assert all(r["seqlens_tok_s"] > 0 and r["baseline_tok_s"] > 0 for r in rows)
