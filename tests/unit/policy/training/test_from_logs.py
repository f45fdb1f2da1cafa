"""``train_from_logs``: offline RL from joined logs served by a published policy, the base it
adopts the observation from, the checkpoint it writes (servable, evaluable off-policy) and
every way the inputs can be unusable."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.artifacts import load_artifact
from recsys.data.logged import LoggedFeedback
from recsys.features import FeatureSpec
from recsys.policy.evaluation.ope_file import LOGGER_TOLERANCE, evaluate_ope_file
from recsys.policy.training.checkpoint import load_policy_checkpoint
from recsys.policy.training.config import SETUP_FIELDS, build_policy
from recsys.policy.training.from_logs import (
    STAGING,
    LogsError,
    heldout_users,
    resolve_base,
    served_versions,
    train_from_logs,
)
from recsys.policy.training.offline import (
    _unshown_candidates,
    logged_slates,
    observed_slates,
)
from recsys.serving.policies import load_served_policy
from tests.unit.policy.served_world import artifact_root, served_logs, write_joined


@pytest.fixture(scope="module")
def logs(small_policies: dict[str, Path]) -> LoggedFeedback:
    """80 users x 12 slates served by the small SlateQ policy with its own sampler."""
    return served_logs(small_policies["slateq"])


@pytest.fixture
def root(small_policies: dict[str, Path], tmp_path: Path) -> Path:
    return artifact_root(tmp_path, small_policies["slateq"], small_policies["reinforce"])


def test_slateq_from_joined_logs_is_servable_and_evaluable_off_policy(
    logs: LoggedFeedback, root: Path, small_policies: dict[str, Path], tmp_path: Path
) -> None:
    dataset = write_joined(logs, tmp_path / "joined")
    epochs: list[int] = []
    result = train_from_logs(
        dataset, root, epochs=3, seed=5, on_epoch=lambda e, m: epochs.append(e)
    )
    assert epochs == [1, 2, 3]
    base_path = root / "policy-slateq" / small_policies["slateq"].name
    assert result.base.how == "logs"  # named by the rows' policy column
    assert result.base.path == base_path
    assert result.artifact.path.parent == root / STAGING / "policy-slateq"
    assert result.slates == len(logs) // 3 == result.summary()["slates"]
    assert result.dropped_rows == {}

    base, new = load_policy_checkpoint(base_path), load_policy_checkpoint(result.artifact.path)
    assert base.features is not None
    assert new.features is not None
    # The observation contract, catalog and learned reward are the base's.
    assert new.features.metadata() == base.features.metadata()
    np.testing.assert_array_equal(new.features.items.table, base.features.items.table)
    assert new.reward_tensors is not None
    assert base.reward_tensors is not None
    for key, value in base.reward_tensors.items():
        np.testing.assert_array_equal(new.reward_tensors[key], value)
    for name in SETUP_FIELDS:
        if name != "seed":
            assert getattr(new.config, name) == getattr(base.config, name), name
    assert (new.config.algo, new.config.seed, new.iteration) == ("slateq", 5, 3)
    assert new.reward_scale > 0
    offline = new.artifact.metadata["offline"]
    assert offline["base"]["version"] == base.artifact.version
    assert offline["slates"] == result.slates
    assert offline["served_versions"] == served_versions(logs)
    # Trained: the weights moved away from the initial ones of the same seed, and the TD
    # loss fell over the epochs.
    torch.manual_seed(5)
    fresh = build_policy(replace(new.config, epsilon=0.0), new.user_dim, new.item_dim, 3)
    initial = fresh.weights()
    assert {k: v.shape for k, v in initial.items()} == {
        k: v.shape for k, v in new.policy.weights().items()
    }
    assert any(not np.array_equal(v, initial[k]) for k, v in new.policy.weights().items())
    losses = [m["td_loss"] for m in result.offline.metrics]
    assert losses[-1] < losses[0]

    # Servable where the base is served ...
    served = load_served_policy(
        result.artifact.path,
        name="slateq",
        spec=FeatureSpec.from_dict(base.features.spec.to_dict()),
        num_items=base.features.num_items,
        retrieval_version=str(base.features.retrieval_version),
    )
    assert served.version.startswith("slateq@it000003-")
    # ... and evaluable off-policy on the same kind of log (no item features in it).
    out = evaluate_ope_file(dataset, policy=str(result.artifact.path), n_bootstrap=50)
    for name in ("ips", "snips", "dr"):
        assert np.isfinite(out["estimates"][name]["value"])
    # The logger re-run from its checkpoint gives every logged slate its logged probability.
    own = evaluate_ope_file(dataset, policy=str(base_path), n_bootstrap=50)["estimates"]
    assert own["ips"]["mean_weight"] == pytest.approx(1.0, abs=1e-6)
    assert own["ips"]["value"] == pytest.approx(own["logged"]["value"], abs=1e-9)


def test_training_is_seeded(logs: LoggedFeedback, root: Path, tmp_path: Path) -> None:
    path = write_joined(logs, tmp_path / "joined")
    runs = [
        train_from_logs(path, root, epochs=1, seed=s, output_root=tmp_path / f"out{i}")
        for i, s in enumerate((1, 1, 2))
    ]
    a, b, c = (load_policy_checkpoint(r.artifact.path).policy.weights() for r in runs)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    assert runs[0].artifact.path.parent == tmp_path / "out0" / "policy-slateq"


def test_reinforce_from_logs_takes_negatives_from_the_logged_candidate_sets(
    logs: LoggedFeedback, root: Path, tmp_path: Path
) -> None:
    result = train_from_logs(logs_file(logs, tmp_path), root, algo="reinforce", epochs=2)
    assert result.config.algo == "reinforce"
    assert result.artifact.metadata["offline"]["negatives"] == 3  # the slate size
    assert all(np.isfinite(v) for m in result.offline.metrics for v in m.values())

    data = logged_slates(logs)
    assert data.candidate_ids is not None
    rows = np.arange(data.num_slates)
    extra = _unshown_candidates(data, rows, 5, np.random.default_rng(0))
    assert extra.shape == (data.num_slates, 5)
    assert not (extra[:, :, None] == data.item_ids[:, None, :]).any()  # never a shown item
    assert all(set(e) <= set(c) for e, c in zip(extra, data.candidate_ids, strict=True))
    assert all(len(set(e)) == 5 for e in extra)  # drawn without replacement
    # More negatives than unshown candidates: all of them, once each.
    everything = _unshown_candidates(data, rows, 100, np.random.default_rng(0))
    assert everything.shape[1] == data.candidate_ids.shape[1] - data.slate_size


def logs_file(logs: LoggedFeedback, tmp_path: Path) -> Path:
    from recsys.data.logged import write_logged_feedback

    path = tmp_path / "logs.parquet"
    write_logged_feedback(path, logs)
    return path


def test_item_features_are_rebuilt_through_the_base_observation(
    logs: LoggedFeedback, small_policies: dict[str, Path]
) -> None:
    features = load_policy_checkpoint(small_policies["slateq"]).features
    assert features is not None
    data = observed_slates(logged_slates(logs), features)
    obs = features.obs(data.user_features, data.item_ids)
    np.testing.assert_array_equal(data.item_features, obs.item_features)
    np.testing.assert_array_equal(data.is_ad, features.is_ad[data.item_ids])
    assert data.item_features.shape[2] == features.items.dim  # the log had width 0


def test_the_base_is_given_else_named_by_the_logs_else_the_newest_served(
    logs: LoggedFeedback, root: Path, small_policies: dict[str, Path], tmp_path: Path
) -> None:
    slateq = root / "policy-slateq" / small_policies["slateq"].name
    reinforce = root / "policy-reinforce" / small_policies["reinforce"].name
    assert resolve_base(logs, root, base=reinforce).how == "given"
    assert resolve_base(logs, root).path == slateq
    anonymous = replace(logs, policy=np.full(len(logs), "retrieval@fallback"))
    newest = resolve_base(anonymous, root, serving_name="reinforce")
    assert (newest.path, newest.how) == (reinforce, "newest")
    with pytest.raises(LogsError, match="pass --base"):
        resolve_base(anonymous, root)
    with pytest.raises(LogsError, match="not a checkpoint directory"):
        resolve_base(logs, root, base=tmp_path / "nowhere")

    # Logs served by two versions that observe differently cannot train one policy.
    other = root / "policy-slateq" / "it999999-1"
    shutil.copytree(slateq, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["metadata"]["features"]["retrieval_version"] = "another-retrieval"
    (other / "manifest.json").write_text(json.dumps(manifest))
    mixed = replace(
        logs, policy=np.where(np.arange(len(logs)) % 2, logs.policy, "slateq@slateq@it999999-1")
    )
    with pytest.raises(LogsError, match="observe requests differently"):
        resolve_base(mixed, root)
    assert load_artifact(slateq).metadata["features"]["retrieval_version"] != "another-retrieval"


def test_unusable_logs_and_options_are_refused_with_the_reason(
    logs: LoggedFeedback, root: Path, small_policies: dict[str, Path], tmp_path: Path
) -> None:
    path = logs_file(logs, tmp_path)
    with pytest.raises(LogsError, match="no such file or directory"):
        train_from_logs(tmp_path / "missing", root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogsError, match="no logged-feedback files"):
        train_from_logs(tmp_path / "empty", root)
    with pytest.raises(LogsError, match="--algo must be one of"):
        train_from_logs(path, root, algo="myopic")
    with pytest.raises(LogsError, match="not observable in logs"):
        train_from_logs(path, root, reward="hidden")
    with pytest.raises(LogsError, match="epochs must be >= 1"):
        train_from_logs(path, root, epochs=0)
    # Slates of two against a base that serves slates of three: nothing can be replayed.
    keep = logs.position < 2
    short = replace(logs.take(keep), slate_size=np.full(int(keep.sum()), 2, np.int16))
    with pytest.raises(LogsError, match=r"none of its \d+ rows can be replayed.*incomplete_slate"):
        train_from_logs(logs_file(short, tmp_path / "short"), root)
    with pytest.raises(LogsError, match="not a usable policy checkpoint"):
        train_from_logs(path, root, base=root / "retrieval" / next(
            p.name for p in (root / "retrieval").iterdir()
        ))  # fmt: skip


def test_partial_slates_are_dropped_and_counted(
    logs: LoggedFeedback, root: Path, tmp_path: Path
) -> None:
    first = logs.request_id[0]
    damaged = logs.take(~((logs.request_id == first) & (logs.position == 2)))
    result = train_from_logs(logs_file(damaged, tmp_path), root, epochs=1)
    assert result.dropped_rows == {"incomplete_slate": 2}
    assert result.slates == len(logs) // 3 - 1


def test_heldout_users_splits_whole_users_stably(logs: LoggedFeedback) -> None:
    held = heldout_users(logs, 0.25)
    assert 0.1 < held.mean() < 0.4
    users_held = set(logs.user_id[held])
    assert not users_held & set(logs.user_id[~held])  # no user on both sides
    np.testing.assert_array_equal(held, heldout_users(logs.take(np.arange(len(logs))), 0.25))
    assert not heldout_users(logs, 0.0).any()
    assert heldout_users(logs, 1.0).all()
    with pytest.raises(ValueError, match="fraction"):
        heldout_users(logs, 1.5)


def test_the_logger_re_run_gives_a_served_log_the_marginals_item_position_estimators_need(
    logs: LoggedFeedback, small_policies: dict[str, Path], tmp_path: Path
) -> None:
    """A served log has conditional propensities only; ``logger=`` re-runs the policy that
    logged it for its marginals, after checking it reproduces every logged propensity."""
    dataset = write_joined(logs, tmp_path / "joined")
    base, other = str(small_policies["slateq"]), str(small_policies["reinforce"])
    without = evaluate_ope_file(dataset, policy=other, n_bootstrap=50, n_samples=20)
    assert "iips" not in without["estimates"]
    assert any("no position_propensity" in n for n in without["notes"])

    out = evaluate_ope_file(dataset, policy=other, n_bootstrap=50, n_samples=20, logger=base)
    assert out["logger"]["max_relative_propensity_difference"] <= LOGGER_TOLERANCE
    est = out["estimates"]
    for name in ("ips", "snips", "dr", "iips", "position_dr"):
        assert np.isfinite(est[name]["value"]), name
    # One ratio per slot instead of a product over the slate: more of the log counts.
    assert est["iips"]["ess"] > est["snips"]["ess"]
    # The logger as the target: the logged slate is a draw of both, so every weight is 1.
    own = evaluate_ope_file(dataset, policy=base, n_bootstrap=50, n_samples=20, logger=base)
    assert own["estimates"]["iips"]["value"] == pytest.approx(
        own["estimates"]["logged"]["value"], abs=1e-6
    )

    with pytest.raises(ValueError, match="does not reproduce the logged propensities"):
        evaluate_ope_file(dataset, policy=base, n_bootstrap=50, n_samples=20, logger=other)
    with pytest.raises(ValueError, match=r"epsilon-greedy 0\.9\) does not reproduce"):
        evaluate_ope_file(
            dataset, policy=base, n_bootstrap=50, n_samples=20, logger=base, logger_epsilon=0.9
        )
    with pytest.raises(ValueError, match="logger_epsilon needs a logger"):
        evaluate_ope_file(dataset, policy=base, logger_epsilon=0.1)
    with pytest.raises(ValueError, match="give a policy too"):
        evaluate_ope_file(dataset, target_column="propensity", logger=base)
