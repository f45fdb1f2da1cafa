"""Shared by the experiment scripts (benchmarks/) that write their figures into the docs: a
generated block between two HTML-comment markers, and the "mean [low, high]" way intervals are
printed. Here, not in benchmarks/, because those scripts run by path and cannot import each
other."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path


def ci_text(m: Mapping[str, float], digits: int = 1) -> str:
    """``mean [ci_low, ci_high]`` of a :func:`~recsys.policy.evaluation.simulator.mean_ci`."""
    return f"{m['mean']:.{digits}f} [{m['ci_low']:.{digits}f}, {m['ci_high']:.{digits}f}]"


def ratio_text(r: Mapping[str, float], digits: int = 2) -> str:
    """``ratio [ci_low, ci_high]`` of a paired ratio."""
    return f"{r['ratio']:.{digits}f} [{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]"


def replace_block(doc: Path, begin: str, end: str, body: str, *, required: bool = True) -> None:
    """Put ``body`` between the ``begin`` and ``end`` markers of ``doc`` (markers kept).

    A doc without the markers stops the run when ``required`` (the figures would silently go
    nowhere), else is left as it is.
    """
    text = doc.read_text()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        if required:
            raise SystemExit(f"{doc} has no {begin} ... {end} block")
        return
    block = f"{begin}\n{body}\n{end}"
    doc.write_text(pattern.sub(lambda _: block, text))
