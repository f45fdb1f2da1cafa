"""benchmarks/plot_serve.py draws the committed serve benchmark into a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.plot_serve import ROOT, plot


def test_the_committed_result_plots(tmp_path: Path) -> None:
    result = json.loads((ROOT / "benchmarks/results/serve.json").read_text())
    out = tmp_path / "serve.png"
    plot(result, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
