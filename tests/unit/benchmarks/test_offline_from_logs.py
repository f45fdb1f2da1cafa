"""The offline-from-logs experiment's report: the OPE check, the claims and the docs block,
from the JSON (the run itself is ``benchmarks/offline_from_logs.py``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks.offline_from_logs import (
    MIN_ESS,
    OPE_ESTIMATORS,
    RESULTS,
    ExperimentConfig,
    must_show,
    ope_check,
    render_doc_block,
)


def _ope(value: float, low: float, high: float, ess: float) -> dict[str, Any]:
    est = {"value": value, "ci_low": low, "ci_high": high, "ess": ess, "n_slates": 1000}
    logged = {**est, "value": 0.84}
    return {"estimates": {"logged": logged, **dict.fromkeys(OPE_ESTIMATORS, est)}}


def test_the_ope_check_compares_each_estimate_with_the_on_policy_value_both_ways() -> None:
    onpolicy = {"clicks_per_slate": {"ratio": 0.86, "ci_low": 0.85, "ci_high": 0.87, "n": 9}}
    inside = ope_check(_ope(0.855, 0.80, 0.90, 400.0), onpolicy)
    assert inside["snips"]["on_policy_inside_ope_ci"]
    assert inside["snips"]["ope_inside_on_policy_ci"]
    assert inside["snips"]["ess_fraction"] == pytest.approx(0.4)
    assert inside["logged_clicks_per_slate"] == 0.84
    wide_off = ope_check(_ope(0.95, 0.90, 1.0, 2.0), onpolicy)
    assert not wide_off["dr"]["on_policy_inside_ope_ci"]
    assert not wide_off["dr"]["ope_inside_on_policy_ci"]
    # A wide interval can hold the value while its centre lies outside the on-policy CI.
    wide = ope_check(_ope(0.95, 0.70, 1.0, 5.0), onpolicy)
    assert wide["ips"]["on_policy_inside_ope_ci"]
    assert not wide["ips"]["ope_inside_on_policy_ci"]
    # ... and an interval resting on a few slates is not evidence, whatever it holds.
    assert not wide["iips"]["usable"]
    assert inside["iips"]["usable"] == (MIN_ESS <= 400.0)


def test_logging_users_stay_in_the_training_half() -> None:
    with pytest.raises(ValueError, match="training half"):
        ExperimentConfig(log_first_user=32_700, log_users=100)


@pytest.mark.skipif(not RESULTS.exists(), reason="the experiment has not been run")
def test_claims_and_docs_block_are_derived_from_the_committed_json() -> None:
    results = json.loads(RESULTS.read_text())
    claims = must_show(results)
    assert claims == results["must_show"]  # re-derivable from the rest of the JSON
    ratio = results["paired"]["new_greedy/logger"]["ratio"]
    assert claims["new_beats_logger_on_policy"]["ci_above_one"] == (ratio["ci_low"] > 1.0)
    block = render_doc_block(results)
    assert f"{ratio['ratio']:.2f} [{ratio['ci_low']:.2f}, {ratio['ci_high']:.2f}]" in block
    assert results["machine"] in block
    for target in ("new_served", "control"):
        ess = results["ope_check"][target]["snips"]["ess"]
        assert f"{ess:.1f} of" in block
