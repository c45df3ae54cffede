"""`seqlens bench patterns --smoke` runs and its chunked and direct patterns agree (the times are
printed, never asserted)."""

from __future__ import annotations

import re

from seqlens.cli import main


def test_bench_patterns_smoke(capsys) -> None:
    assert main(["bench", "patterns", "--smoke"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "(s)" not in line]
    assert len(rows) == 2
    for line in rows:
        diff = float(line.rstrip(" |").split("|")[-1])
        assert diff < 1e-5, line
        assert re.match(r"\| .+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", line)
