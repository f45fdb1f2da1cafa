"""Off-policy evaluation (OPE) of slate policies from logged feedback, with bootstrap CIs.

A log holds, for every impressed slot ``k`` of slate ``s`` (context ``x``, ordered slate
``a = (a_0, ..., a_{S-1})``), the logging policy's conditional propensity
``mu_k = mu(a_k | a_<k, x)``, its marginal position propensity ``mu(a_k @ k | x)`` and a slot
reward ``r_k`` (by default the click). A *target* policy ``pi`` supplies the same two
probabilities for the logged slots. With ``n`` logged slates and ``R_s = sum_k r_k``:

==============  ============================================================================
estimator       value
==============  ============================================================================
``logged``      ``mean_s R_s``: the on-policy value of the logging policy (reference)
``ips``         ``mean_s w_s R_s`` with the slate weight ``w_s = prod_k pi_k / mu_k``
                (Horvitz & Thompson 1952; the "standard IPS" of Li et al. 2018). Unbiased
                for any reward; variance grows with the slate space.
``snips``       ``sum_s w_s R_s / sum_s w_s`` (self-normalised IPS; Swaminathan & Joachims
                2015). Biased O(1/n), much lower variance; invariant to a constant reward
                shift.
``iips``        ``mean_s sum_k w_sk r_sk`` with the item-position weight
                ``w_sk = pi(a_k @ k | x) / mu(a_k @ k | x)`` from *marginal* position
                propensities (Li et al. 2018, "Offline Evaluation of Ranking Policies with
                Click Models", KDD; the independent item-position estimator). Unbiased when
                the expected reward of a slot depends only on (context, item, position),
                e.g. the position-based click model; variance far below ``ips``.
``dm``          ``mean_s sum_k qhat_pi(x_s, k)`` (direct method): the reward model's expected
                slot reward under the target, ``qhat_pi(x, k) = E_{a ~ pi(. @ k | x)}
                qhat(x, a, k)``. Only as good as the model; reported only when the model's
                target expectation is known (``RewardPredictions``).
``dr``          ``mean_s [ sum_k qhat_pi(x_s, k) + w_s (R_s - sum_k qhat(x_s, a_sk, k)) ]``:
                slate-level doubly robust (Dudik et al. 2011 applied to the whole slate).
                Unbiased for *any* fixed ``qhat`` because ``E_mu[w_s sum_k qhat(x, a_k, k)]
                = sum_k qhat_pi(x, k)``; its variance shrinks as ``qhat`` approaches the true
                expected reward (zero with a perfect model and deterministic rewards).
``position_dr`` ``mean_s sum_k [ qhat_pi(x_s, k) + w_sk (r_sk - qhat(x_s, a_sk, k)) ]``:
                the item-position DR: ``iips`` weights with the model as control variate
                (the independence analogue of Kiyohara et al. 2022's cascade DR, WSDM).
                Unbiased under the ``iips`` assumption.
==============  ============================================================================

Two families share the slate bootstrap. The *slate* estimators ``ips``, ``snips`` and ``dr``
weigh whole slates, so they need the conditional propensities of both policies and every slot
of every slate; the *item-position* estimators ``iips`` and ``position_dr`` need only the
marginals of the logged slots, so they also run on partial slates, e.g. a public bandit log
such as the Open Bandit Dataset that records one impression per row and only a marginal
propensity (:mod:`recsys.data.obd`). A family runs when the target supplies its
probabilities; a log that does not know the logging side's (null/NaN ``propensity`` or
``position_propensity``, a partial slate) is then refused with an error naming the column.

Without a caller's reward model, ``dr`` and ``position_dr`` use a per-position mean reward,
cross-fitted over two folds of slates, as control variate (``qhat`` independent of the item,
so ``qhat_pi = qhat``): that is IPS with a baseline, still unbiased, and ``dm`` is omitted
because a target-blind model says nothing about the target. :class:`ItemPositionMeanModel`
is the simple default model for target policies whose candidate sets are known (see
:func:`plackett_luce_target`).

Every estimate is a ratio of sums over slates, so the 95% percentile bootstrap resamples
*slates* (never rows: slots of one slate are dependent) ``B`` times with one seeded index
matrix shared by all estimators (paired: differences between estimators are meaningful).
The percentile bootstrap under-covers when weights are heavy-tailed: read ``ess`` (Kish's
effective sample size ``(sum w)^2 / sum w^2``) before trusting an interval, and consider
``max_weight`` clipping (which trades variance for a downward bias on non-negative rewards).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.logged import LoggedFeedback, LoggedFeedbackError, logged_feedback_files
from recsys.types import FloatArray, IntArray

Float64Array = npt.NDArray[np.float64]

__all__ = [
    "ESTIMATORS",
    "ItemPositionMeanModel",
    "LoggedSlates",
    "OPEResult",
    "RewardPredictions",
    "TargetPropensities",
    "evaluate_off_policy",
    "load_target_column",
    "load_target_propensities",
    "plackett_luce_target",
    "results_to_json",
]

ESTIMATORS: Final = ("logged", "ips", "snips", "iips", "dm", "dr", "position_dr")
"""Every estimator name :func:`evaluate_off_policy` can report, in report order."""

# Probabilities are often stored as float32 or computed with rounding; allow this much above 1.
_PROB_SLACK = 1e-6
# Finite logits are clamped here so (score - max) / T never reaches -inf and 0/0 cannot arise
# (same convention as recsys.policy.exploration).
_LOGIT_FLOOR = -1e300


# ---------------------------------------------------------------------------------------------
# Inputs


def _float_rows(values: npt.ArrayLike, name: str, n: int) -> Float64Array:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc
    if n < 0 or arr.shape != (n,):
        want = "a 1-D array" if n < 0 else f"shape ({n},) (one value per row)"
        raise ValueError(f"{name} has shape {arr.shape}, expected {want}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf (row {int(np.argmin(np.isfinite(arr)))})")
    return arr


def _probability_rows(
    values: npt.ArrayLike, name: str, n: int, *, allow_zero: bool
) -> Float64Array:
    """Validate per-row probabilities: in (0, 1] (logging) or [0, 1] (target)."""
    arr = _float_rows(values, name, n)
    low_ok = arr >= 0 if allow_zero else arr > 0
    bad = ~(low_ok & (arr <= 1 + _PROB_SLACK))
    if bad.any():
        i = int(np.argmax(bad))
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must lie in {interval}; row {i} has {arr[i]!r}")
    clipped: Float64Array = np.minimum(arr, 1.0)
    return clipped


def _known_probability_rows(values: npt.ArrayLike | None, name: str, n: int) -> Float64Array | None:
    """Logging probabilities where NaN means unknown: known ones must lie in (0, 1]; ``None``
    when no row knows one."""
    if values is None:
        return None
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}, expected shape ({n},) (one value per row)")
    known = ~np.isnan(arr)
    if not known.any():
        return None
    checked = _probability_rows(np.where(known, arr, 1.0), name, n, allow_zero=False)
    out: Float64Array = np.where(known, checked, np.nan)
    return out


def _int_rows(values: npt.ArrayLike, name: str, n: int) -> IntArray:
    raw = np.asarray(values)
    if raw.shape != (n,):
        raise ValueError(f"{name} has shape {raw.shape}, expected ({n},) (one value per row)")
    if n and raw.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {raw.dtype}")
    return raw.astype(np.int64)


@dataclass(frozen=True, eq=False)
class LoggedSlates:
    """Logged slots grouped into validated slates: what every estimator reads from a log.

    Rows keep the caller's order, so per-row arrays (rewards, target propensities) line up
    with the source. ``slate[i]`` is the dense index of row ``i``'s slate, numbered by first
    appearance; ``keys[s]`` is the caller's id of slate ``s`` (the ``request_id``).
    ``slate_size[s]`` is the slate's number of slots and ``logged_slots[s]`` how many of them
    the log holds (each position at most once); a slate is *complete* when they are equal.
    ``propensity`` is the logging policy's conditional ``mu(a_k | a_<k)`` in (0, 1] (needed by
    ``ips`` / ``snips`` / ``dr``), ``position_propensity`` its marginal ``mu(a_k @ k)`` (needed
    by ``iips`` / ``position_dr``); either is NaN on rows where it is unknown and ``None``
    when no row knows it. Build with :meth:`from_arrays` or :meth:`from_feedback`.
    """

    slate: IntArray
    position: IntArray
    propensity: Float64Array | None
    position_propensity: Float64Array | None
    item_id: IntArray | None
    keys: npt.NDArray[Any]
    slate_size: IntArray
    logged_slots: IntArray

    @property
    def n_rows(self) -> int:
        """Logged slots."""
        return int(self.slate.shape[0])

    @property
    def n_slates(self) -> int:
        """Logged slates."""
        return int(self.slate_size.shape[0])

    @property
    def complete(self) -> bool:
        """Whether every slate holds all of its slots."""
        return bool(np.array_equal(self.logged_slots, self.slate_size))

    def per_slate(self, x: npt.ArrayLike) -> Float64Array:
        """Per-row values summed per slate, ``[m]``."""
        out: Float64Array = np.bincount(
            self.slate, weights=np.asarray(x, dtype=np.float64), minlength=self.n_slates
        ).astype(np.float64)
        return out

    def per_position(self, x: npt.ArrayLike) -> Float64Array:
        """Per-row values scattered to ``[m, S_max]`` by (slate, position); absent slots
        are 0."""
        out: Float64Array = np.zeros((self.n_slates, int(self.slate_size.max())))
        out[self.slate, self.position] = np.asarray(x, dtype=np.float64)
        return out

    @classmethod
    def from_arrays(
        cls,
        slate_id: npt.ArrayLike,
        position: npt.ArrayLike,
        propensity: npt.ArrayLike | None,
        position_propensity: npt.ArrayLike | None = None,
        item_id: npt.ArrayLike | None = None,
        slate_size: npt.ArrayLike | None = None,
    ) -> LoggedSlates:
        """Group rows by ``slate_id`` (any hashable dtype: request ids, ints) and validate.

        Without ``slate_size`` every slate must hold positions ``0..S-1`` exactly once (its
        row count is ``S``). With ``slate_size`` (per row, one value per slate) a slate may
        hold any distinct positions below it (a partial slate). Propensities are NaN where
        unknown (``None``: unknown everywhere). Raises ``ValueError`` naming the problem:
        no rows (:class:`~recsys.data.logged.LoggedFeedbackError`), mismatched lengths,
        known propensities outside (0, 1], bad positions.
        """
        ids = np.asarray(slate_id)
        if ids.ndim != 1:
            raise ValueError(f"slate_id must be a 1-D array, got shape {ids.shape}")
        if ids.shape[0] == 0:
            raise LoggedFeedbackError("the log has no rows: there is nothing to evaluate")
        n = int(ids.shape[0])
        pos = _int_rows(position, "position", n)
        prop = _known_probability_rows(propensity, "propensity", n)
        pos_prop = _known_probability_rows(position_propensity, "position_propensity", n)
        items = None if item_id is None else _int_rows(item_id, "item_id", n)

        uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        by_appearance = np.argsort(first, kind="stable")
        renumber = np.empty_like(by_appearance)
        renumber[by_appearance] = np.arange(by_appearance.shape[0])
        slate = renumber[inverse.reshape(-1)].astype(np.int64)
        keys = uniq[by_appearance]
        m = keys.shape[0]
        counts = np.bincount(slate, minlength=m).astype(np.int64)
        if slate_size is None:
            sizes = counts
        else:
            declared = _int_rows(slate_size, "slate_size", n)
            sizes = np.zeros(m, dtype=np.int64)
            sizes[slate] = declared
            differ = declared != sizes[slate]
            if differ.any():
                s = int(slate[int(np.argmax(differ))])
                raise ValueError(
                    f"slate {keys[s : s + 1].tolist()[0]!r} has rows with different "
                    f"slate_size {sorted(set(declared[slate == s].tolist()))}"
                )

        # Distinct non-negative positions that are all < the slate's row count are exactly
        # 0..count-1, so "in range" plus "no duplicate" proves contiguity.
        bad = (pos < 0) | (pos >= sizes[slate])
        if not bad.any():
            cell = slate * int(sizes.max()) + pos
            sorted_cell = np.sort(cell)
            dup = sorted_cell[1:] == sorted_cell[:-1]
            if dup.any():
                bad = cell == sorted_cell[1:][dup][0]
        if bad.any():
            s = int(slate[int(np.argmax(bad))])
            got = sorted(pos[slate == s].tolist())
            rule = (
                "every slate must hold positions 0..S-1 exactly once"
                if slate_size is None
                else f"positions must be distinct and below its slate_size {int(sizes[s])}"
            )
            raise ValueError(f"slate {keys[s : s + 1].tolist()[0]!r} has positions {got}; {rule}")
        return cls(
            slate=slate,
            position=pos,
            propensity=prop,
            position_propensity=pos_prop,
            item_id=items,
            keys=keys,
            slate_size=sizes,
            logged_slots=counts,
        )

    @classmethod
    def from_feedback(cls, logs: LoggedFeedback) -> LoggedSlates:
        """Group a :class:`LoggedFeedback` batch by ``request_id`` with its declared
        ``slate_size`` (a request may log fewer slots: a partial slate).

        Slate weights use the per-row ``propensity`` (their product), not
        ``slate_log_propensity``, so logging and target probabilities are computed alike.
        Raises :class:`~recsys.data.logged.LoggedFeedbackError` for a log without rows.
        """
        if len(logs) == 0:
            raise LoggedFeedbackError("the log has no rows: there is nothing to evaluate")
        return cls.from_arrays(
            logs.request_id,
            logs.position,
            logs.propensity,
            position_propensity=logs.position_propensity,
            item_id=logs.item_id,
            slate_size=logs.slate_size,
        )

    def require_whole_slates(self, why: str) -> None:
        """Refuse partial slates with a :class:`~recsys.data.logged.LoggedFeedbackError`
        naming one; ``why`` completes "every slot of a slate is needed: ..."."""
        short = self.logged_slots != self.slate_size
        if short.any():
            s = int(np.argmax(short))
            raise LoggedFeedbackError(
                f"slate {self.keys[s : s + 1].tolist()[0]!r} has {int(self.logged_slots[s])} rows "
                f"but slate_size {int(self.slate_size[s])} ({int(short.sum())} of "
                f"{self.n_slates} slates are partial); {why}"
            )

    def require_known(self, column: str, what: str) -> Float64Array:
        """The ``propensity`` or ``position_propensity`` column, known on every row, else a
        :class:`~recsys.data.logged.LoggedFeedbackError` naming the column and saying ``what``
        needs it."""
        values: Float64Array | None = getattr(self, column)
        unknown = self.n_rows if values is None else int(np.isnan(values).sum())
        if values is None or unknown:
            other = (
                "give the target's marginal position probabilities only (position_column) "
                "for iips and position_dr"
                if column == "propensity"
                else "give the target's conditional probabilities only (target_column) for "
                "ips, snips and dr"
            )
            raise LoggedFeedbackError(
                f"the log's {column} is unknown (null) on {unknown} of {self.n_rows} rows, and "
                f"{what}; {other}"
            )
        return values


@dataclass(frozen=True, eq=False)
class RewardPredictions:
    """A reward model's predictions for DM / DR, one value per logged row.

    ``logged[i] = qhat(x, a_k, k)``: predicted reward of the logged item at its slot.
    ``target[i] = E_{a ~ pi(. @ k | x)} qhat(x, a, k)``: the predicted reward the *target*
    policy earns at row ``i``'s position ``k`` (its marginal over items at ``k``); summed over a
    slate's rows it is the predicted slate reward under the target, assuming the target fills
    as many slots as were logged. An unbiased Monte Carlo estimate of ``target`` keeps DR
    unbiased.
    """

    logged: Float64Array
    target: Float64Array

    def __post_init__(self) -> None:
        raw = np.asarray(self.logged)
        n = raw.shape[0] if raw.ndim == 1 else -1
        object.__setattr__(self, "logged", _float_rows(raw, "reward_predictions.logged", n))
        object.__setattr__(self, "target", _float_rows(self.target, "reward_predictions.target", n))


@dataclass(frozen=True, eq=False)
class TargetPropensities:
    """What the target policy ``pi`` would have done on the logged slates, per logged row.

    ``propensity[i] = pi(a_k | a_<k, x)`` (conditional; a slate's product is ``pi(slate)``;
    for ``ips``, ``snips`` and ``dr``), ``position_propensity[i] = pi(a_k @ k | x)``
    (marginal; for ``iips`` and ``position_dr``). Either may be ``None`` (those estimators are
    then not computed), not both. Zero is allowed (a deterministic target never shows most
    slates). ``position_propensity_stderr`` is the Monte Carlo standard error where the
    marginal was estimated (see :func:`plackett_luce_target`); ``reward_predictions``
    optionally carries a reward model's predictions computed alongside.
    """

    propensity: Float64Array | None
    position_propensity: Float64Array | None = None
    position_propensity_stderr: Float64Array | None = None
    reward_predictions: RewardPredictions | None = None

    def __post_init__(self) -> None:
        given = self.propensity if self.propensity is not None else self.position_propensity
        if given is None:
            raise ValueError("the target needs propensity, position_propensity or both")
        raw = np.asarray(given)
        n = raw.shape[0] if raw.ndim == 1 else -1
        for name in ("propensity", "position_propensity"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(
                    self, name, _probability_rows(value, f"target {name}", n, allow_zero=True)
                )
        if self.position_propensity_stderr is not None:
            object.__setattr__(
                self,
                "position_propensity_stderr",
                _float_rows(self.position_propensity_stderr, "position_propensity_stderr", n),
            )
        if self.reward_predictions is not None and self.reward_predictions.logged.shape != (n,):
            raise ValueError("reward_predictions must have one value per target row")

    @property
    def n_rows(self) -> int:
        """Rows the probabilities are given for."""
        given = self.propensity if self.propensity is not None else self.position_propensity
        assert given is not None
        return int(given.shape[0])


def _target_column_files(path: Path, column: str) -> list[Path]:
    """The files of a log (a file or a directory) that carry ``column``, checked."""
    try:
        files = logged_feedback_files(path)
    except LoggedFeedbackError as exc:
        raise ValueError(f"no Parquet file at {path}: {exc}") from exc
    for f in files:
        try:
            schema = pq.read_schema(str(f))
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"{f} is not a Parquet file: {exc}") from exc
        if column not in schema.names:
            raise ValueError(f"{f} has no column {column!r} (columns: {', '.join(schema.names)})")
        kind = schema.field(column).type
        if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
            raise ValueError(f"column {column!r} must be numeric, found {kind}")
    return files


def load_target_column(path: Path | str, column: str) -> FloatArray:
    """Read one numeric column (e.g. ``target_propensity``) from a logged-feedback log.

    The logged format allows extra columns beyond its schema (readers select the schema's), so
    a caller can ship a target policy's per-row probabilities next to the log; rows come back
    in log order (a file, or every file of a directory in
    :func:`~recsys.data.logged.logged_feedback_files` order), aligned with
    :func:`recsys.data.logged.read_logged_feedback`. Returns float32 like the format's
    ``propensity``. Raises ``ValueError`` when the log or column is missing, non-numeric or has
    nulls; range checks happen in :class:`TargetPropensities`.
    """
    files = _target_column_files(Path(path), column)
    parts = [pq.ParquetFile(str(f)).read(columns=[column]).column(column) for f in files]
    nulls = sum(p.null_count for p in parts)
    if nulls:
        raise ValueError(f"column {column!r} has {nulls} null values")
    out: FloatArray = np.concatenate(
        [p.to_numpy().astype(np.float32) for p in parts] or [np.zeros(0, np.float32)]
    )
    return out


def load_target_propensities(
    path: Path | str, column: str | None, position_column: str | None = None
) -> TargetPropensities:
    """:class:`TargetPropensities` from extra columns of a logged-feedback log.

    ``column`` holds the target's conditional per-slot probability (the ``propensity``
    convention; for ``ips``, ``snips``, ``dr``), ``position_column`` its marginal position
    probability (for ``iips``, ``position_dr``); give at least one. A column that is 0 on
    every row is refused: the target then puts no mass on any logged action, so
    importance-weighted estimates say nothing (IPS is 0 and SNIPS undefined by construction).
    """
    if column is None and position_column is None:
        raise ValueError("give a target column, a position column or both")
    values: dict[str, Float64Array | None] = {}
    for key, name in (("propensity", column), ("position_propensity", position_column)):
        values[key] = None if name is None else load_target_column(path, name).astype(np.float64)
        v = values[key]
        if v is not None and v.size and not np.any(v > 0):
            raise ValueError(
                f"the target (column {name!r}) gives probability 0 to every logged slot: no "
                "logged action is one it would take, so importance weighting has nothing to "
                "reweight (IPS is 0 and SNIPS undefined by construction); check the column"
            )
    return TargetPropensities(
        propensity=values["propensity"], position_propensity=values["position_propensity"]
    )


# ---------------------------------------------------------------------------------------------
# Plackett-Luce target policies


def _logsumexp_masked(z: Float64Array, mask: npt.NDArray[np.bool_]) -> Float64Array:
    """Row-wise ``log sum_{mask} exp(z)``; ``-inf`` for empty rows."""
    zz = np.where(mask, z, -np.inf)
    peak = zz.max(axis=1)
    safe = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        out: Float64Array = safe + np.log(np.exp(zz - safe[:, None]).sum(axis=1))
    return out


def _sampled_prefixes(
    zc: Float64Array, s_max: int, n_samples: int, rng: np.random.Generator
) -> tuple[IntArray, Float64Array]:
    """First ``s_max`` items of ``n_samples`` Gumbel-top-k rankings per row of logits ``zc``.

    Returns ``top [nb, M, s_max]`` (candidate indices in rank order) and ``avail [nb, M,
    s_max]``, the log of the PL mass still unplaced at each slot: the suffix of the prefix's
    logits (+) everything ranked below ``s_max``. A partial sort keeps it ``O(C)`` per sample.
    """
    nb, n_cand = zc.shape
    # Gumbel noise is -log(Exp(1)); ranking z + G descending is ranking log(E) - z ascending,
    # and exponential draws are cheaper than gumbel ones.
    neg_keys = np.log(rng.standard_exponential(size=(nb, n_samples, n_cand))) - zc[:, None, :]
    rows = np.arange(nb)[:, None, None]
    if s_max < n_cand:
        part = np.argpartition(neg_keys, s_max - 1, axis=2)
        top = part[..., :s_max]
        z_rest = zc[rows, part[..., s_max:]]
        peak = z_rest.max(axis=2, keepdims=True)
        peak = np.where(np.isfinite(peak), peak, 0.0)
        with np.errstate(divide="ignore"):
            log_rest = peak + np.log(np.exp(z_rest - peak).sum(axis=2, keepdims=True))
    else:
        top = np.broadcast_to(np.arange(n_cand), neg_keys.shape)
        log_rest = np.full((nb, n_samples, 1), -np.inf)
    top = np.take_along_axis(top, np.argsort(np.take_along_axis(neg_keys, top, 2), axis=2), 2)
    z_top = zc[rows, top]
    suffix = np.logaddexp.accumulate(z_top[..., ::-1], axis=2)[..., ::-1]
    avail: Float64Array = np.logaddexp(suffix, log_rest)
    return top.astype(np.int64, copy=False), avail


def plackett_luce_target(
    slates: LoggedSlates,
    candidate_scores: npt.ArrayLike,
    logged_candidate: npt.ArrayLike,
    *,
    temperature: float = 1.0,
    n_samples: int = 500,
    seed: int = 0,
    candidate_rewards: npt.ArrayLike | None = None,
    chunk_elements: int = 1 << 20,
) -> TargetPropensities:
    """Propensities of a Plackett-Luce target ``softmax(scores / T)`` on the logged slates.

    ``candidate_scores[s, j]`` is the target's score of candidate ``j`` for slate ``s``
    (``[n_slates, C]``, slates in ``slates.keys`` order; ``-inf`` pads smaller candidate
    sets); ``logged_candidate[i]`` is the column of row ``i``'s logged item in its slate's
    candidates. The target fills ``slates.slate_size`` slots.

    * Conditional propensities are exact (``None`` when some slate is partial: what sat above
      a logged slot is then unknown): ``pi(a_k | a_<k) = exp z_{a_k} / (sum of exp z over
      candidates not in a_<k)``, normalisers accumulated with ``logaddexp`` (no cancellation).
    * Marginal position propensities ``pi(a_k @ k)`` have no closed form; they are estimated
      from ``M = n_samples`` Gumbel-top-k rankings per slate, Rao-Blackwellised: for each
      sampled ranking ``o``, ``P(a_k @ k | o_<k) = 1[a_k not in o_<k] exp z_{a_k} /
      sum_{j not in o_<k} exp z_j``, averaged over samples. The estimate is unbiased, exact at
      position 0, and its standard error (returned per row in
      ``position_propensity_stderr``) is at most ``sqrt(p (1 - p) / M)``, the plain
      indicator estimator's: <= 0.023 at the default ``M = 500``, <= 0.011 at ``M = 2000``.
      Because the noise is unbiased and independent across slates, ``iips`` stays unbiased
      (it is linear in ``pi``) and the extra variance (~ ``stderr / mu`` per slot) is part of
      each slate's term, so the slate bootstrap's CI already includes it.
    * ``candidate_rewards`` (``[n_slates, C]`` or ``[n_slates, C, S_max]``: a reward model's
      ``qhat(x, j, k)``, e.g. ``model.predict(candidate_items[:, :, None], np.arange(S))``
      with :class:`ItemPositionMeanModel`) adds ``reward_predictions``: ``logged`` read off
      exactly, ``target`` the same-sample Monte Carlo mean of ``qhat`` at each position
      (unbiased, so DR stays unbiased).

    Time is ``O(n_slates * M * C)`` (a partial sort per sample; about 25-80 ns per element
    of ``n_slates * M * C`` on one core of a laptop-class CPU, so 2k slates x 50 candidates x
    500 samples takes ~2 s); memory ~``40 * chunk_elements`` bytes, vectorized over chunks of
    ``chunk_elements // (M * C)`` slates.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    scores = np.asarray(candidate_scores, dtype=np.float64)
    m, n = slates.n_slates, slates.n_rows
    if scores.ndim != 2 or scores.shape[0] != m or scores.shape[1] == 0:
        raise ValueError(
            f"candidate_scores has shape {scores.shape}, expected ({m}, C): one row per slate"
        )
    if np.isnan(scores).any() or np.isposinf(scores).any():
        raise ValueError("candidate_scores must be finite or -inf (padding)")
    n_cand = scores.shape[1]
    cand = _int_rows(logged_candidate, "logged_candidate", n)
    if cand.min() < 0 or cand.max() >= n_cand:
        raise ValueError(f"logged_candidate must lie in [0, {n_cand})")
    sid, pos = slates.slate, slates.position
    finite = np.isfinite(scores)
    if not finite[sid, cand].all():
        i = int(np.argmin(finite[sid, cand]))
        raise ValueError(f"row {i}: the logged candidate has a padding (-inf) score")
    cell = np.sort(sid * n_cand + cand)
    if (cell[1:] == cell[:-1]).any():
        raise ValueError("a slate lists the same logged candidate twice")
    rewards = None
    if candidate_rewards is not None:
        rewards = np.asarray(candidate_rewards, dtype=np.float64)
        if rewards.ndim == 2:
            rewards = rewards[:, :, None]
        depth_ok = rewards.ndim == 3 and rewards.shape[2] in (1, int(slates.slate_size.max()))
        if not depth_ok or rewards.shape[:2] != scores.shape:
            raise ValueError(
                f"candidate_rewards has shape {np.asarray(candidate_rewards).shape}, expected "
                f"{scores.shape} or {(*scores.shape, int(slates.slate_size.max()))}"
            )
        if not np.isfinite(rewards[finite]).all():
            raise ValueError("candidate_rewards must be finite for every real candidate")

    peak = np.where(finite, scores, -np.inf).max(axis=1)
    with np.errstate(over="ignore"):
        scaled = np.maximum((scores - peak[:, None]) / temperature, _LOGIT_FLOOR)
    z = np.where(finite, scaled, -np.inf)
    s_max = int(slates.slate_size.max())

    # Exact conditionals: normaliser of slot k = chosen[k:] (+) everything never chosen. A
    # partial slate does not say what sat above a logged slot, so its conditional is unknown.
    conditional = None
    if slates.complete:
        chosen = np.full((m, s_max), -np.inf)
        chosen[sid, pos] = z[sid, cand]
        available = finite.copy()
        available[sid, cand] = False
        log_rest = _logsumexp_masked(z, available)
        suffix = np.logaddexp.accumulate(chosen[:, ::-1], axis=1)[:, ::-1]
        log_norm = np.logaddexp(suffix, log_rest[:, None])
        conditional = np.exp(np.minimum(z[sid, cand] - log_norm[sid, pos], 0.0))

    # Monte Carlo marginals, chunked over slates (rows sorted by slate to slice per chunk).
    rng = np.random.default_rng(seed)
    by_slate = np.argsort(sid, kind="stable")
    starts = np.searchsorted(sid[by_slate], np.arange(m + 1))
    marginal = np.empty(n)
    stderr = np.empty(n)
    expected_q = np.empty(n) if rewards is not None else None
    per_chunk = max(1, chunk_elements // (n_samples * n_cand))
    for a in range(0, m, per_chunk):
        b = min(m, a + per_chunk)
        zc = z[a:b]
        top, avail_mass = _sampled_prefixes(zc, s_max, n_samples, rng)
        rows = by_slate[starts[a] : starts[b]]
        ls, c, k = sid[rows] - a, cand[rows], pos[rows]
        # Slot of the logged item in each sampled prefix (s_max when it is not in the prefix).
        hit = top[ls] == c[:, None, None]
        slot_of_c = np.where(hit.any(axis=2), hit.argmax(axis=2), s_max)
        still = slot_of_c >= k[:, None]
        share = np.exp(np.minimum(zc[ls, c][:, None] - avail_mass[ls, :, k], 0.0))
        vals = np.where(still, share, 0.0)
        marginal[rows] = vals.mean(axis=1)
        stderr[rows] = vals.std(axis=1, ddof=1) / math.sqrt(n_samples)
        if rewards is not None and expected_q is not None:
            k_q = k if rewards.shape[2] > 1 else np.zeros_like(k)
            picked = top[ls, :, k]
            expected_q[rows] = rewards[(a + ls)[:, None], picked, k_q[:, None]].mean(axis=1)

    predictions = None
    if rewards is not None and expected_q is not None:
        k_q = pos if rewards.shape[2] > 1 else np.zeros_like(pos)
        predictions = RewardPredictions(logged=rewards[sid, cand, k_q], target=expected_q)
    return TargetPropensities(
        propensity=conditional,
        position_propensity=np.minimum(marginal, 1.0),
        position_propensity_stderr=stderr,
        reward_predictions=predictions,
    )


# ---------------------------------------------------------------------------------------------
# Default reward model


@dataclass(frozen=True, eq=False)
class ItemPositionMeanModel:
    """Direct-method reward model ``qhat(item, k)``: shrunk mean logged reward per (item, slot).

    ``qhat(j, k) = (sum of r over rows with item j at k + lambda * m_k) / (count + lambda)``
    with ``m_k`` the mean reward at position ``k``; unseen items get ``m_k``. It ignores the
    context, so DM with it is biased under personalised logging; DR corrects that bias. Fitted
    on the same log it evaluates, DR picks up an O(1/n) overfitting bias; fit on a held-out
    log where one exists.
    """

    items: IntArray
    table: Float64Array
    position_mean: Float64Array
    prior_strength: float

    @classmethod
    def fit(
        cls,
        item_id: npt.ArrayLike,
        position: npt.ArrayLike,
        slot_rewards: npt.ArrayLike,
        *,
        prior_strength: float = 10.0,
    ) -> ItemPositionMeanModel:
        """Fit from per-row logged items, positions and rewards."""
        if not (math.isfinite(prior_strength) and prior_strength > 0):
            raise ValueError(f"prior_strength must be finite and > 0, got {prior_strength}")
        raw = np.asarray(item_id)
        n = raw.shape[0] if raw.ndim == 1 else -1
        if n <= 0:
            raise ValueError("item_id must be a non-empty 1-D array")
        items_row = _int_rows(raw, "item_id", n)
        pos = _int_rows(position, "position", n)
        if pos.min() < 0:
            raise ValueError("position must be >= 0")
        r = _float_rows(slot_rewards, "slot_rewards", n)
        n_pos = int(pos.max()) + 1
        items, item_idx = np.unique(items_row, return_inverse=True)
        cell = item_idx.reshape(-1) * n_pos + pos
        size = items.shape[0] * n_pos
        sums = np.bincount(cell, weights=r, minlength=size).reshape(-1, n_pos)
        counts = np.bincount(cell, minlength=size).reshape(-1, n_pos)
        pos_counts = np.bincount(pos, minlength=n_pos)
        position_mean = np.bincount(pos, weights=r, minlength=n_pos) / np.maximum(pos_counts, 1)
        table = (sums + prior_strength * position_mean) / (counts + prior_strength)
        return cls(
            items=items.astype(np.int64),
            table=table,
            position_mean=position_mean,
            prior_strength=float(prior_strength),
        )

    def predict(self, item_id: npt.ArrayLike, position: npt.ArrayLike) -> Float64Array:
        """``qhat`` for broadcastable arrays of item ids and positions."""
        items, pos = np.broadcast_arrays(
            np.asarray(item_id, dtype=np.int64), np.asarray(position, dtype=np.int64)
        )
        n_pos = self.position_mean.shape[0]
        if pos.size and (pos.min() < 0 or pos.max() >= n_pos):
            raise ValueError(f"position must lie in [0, {n_pos}) (the positions seen in fit)")
        idx = np.minimum(np.searchsorted(self.items, items), self.items.shape[0] - 1)
        seen = self.items[idx] == items
        out: Float64Array = np.where(seen, self.table[idx, pos], self.position_mean[pos])
        return out


def _position_baseline(slates: LoggedSlates, rewards: Float64Array) -> RewardPredictions:
    """Per-position mean reward, cross-fitted over two folds of slates.

    Folds alternate over the sorted slate keys, so the split (and the estimate) does not
    depend on the order of the rows.
    """
    n_pos = int(slates.slate_size.max())
    key_rank = np.empty(slates.n_slates, dtype=np.int64)
    key_rank[np.argsort(slates.keys, kind="stable")] = np.arange(slates.n_slates)
    fold = key_rank[slates.slate] % 2
    cell = fold * n_pos + slates.position
    sums = np.bincount(cell, weights=rewards, minlength=2 * n_pos).reshape(2, n_pos)
    counts = np.bincount(cell, minlength=2 * n_pos).reshape(2, n_pos)
    overall = sums.sum(axis=0) / np.maximum(counts.sum(axis=0), 1)
    other = 1 - fold
    other_counts = counts[other, slates.position]
    q = np.where(
        other_counts > 0,
        sums[other, slates.position] / np.maximum(other_counts, 1),
        overall[slates.position],
    )
    return RewardPredictions(logged=q, target=q)


# ---------------------------------------------------------------------------------------------
# Estimators


@dataclass(frozen=True, slots=True)
class OPEResult:
    """One estimator's off-policy value of the target policy with its bootstrap CI.

    ``value`` is the expected *slate* reward (sum of slot rewards) per slate. ``ci_low`` /
    ``ci_high`` are the percentile bootstrap interval at ``confidence`` over ``n_bootstrap``
    slate resamples (NaN when ``n_bootstrap == 0``) and ``std_error`` the bootstrap standard
    deviation. ``ess`` is Kish's effective sample size of the (clipped) importance weights in
    slates (per-position estimators: the mean over positions; unweighted ones: ``n_slates``),
    ``clipped_fraction`` the share of weights ``max_weight`` cut, ``mean_weight`` the mean
    (clipped) weight, which should be near 1 when propensities are right.
    """

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    std_error: float
    n_slates: int
    n_rows: int
    ess: float
    clipped_fraction: float
    mean_weight: float
    confidence: float
    n_bootstrap: int

    def as_dict(self) -> dict[str, str | int | float | None]:
        """Plain JSON-ready values; NaN becomes ``None``."""
        out: dict[str, str | int | float | None] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = None if isinstance(v, float) and not math.isfinite(v) else v
        return out

    def to_json(self) -> str:
        """This result as a JSON object."""
        return json.dumps(self.as_dict())


def results_to_json(results: Mapping[str, OPEResult], *, indent: int | None = None) -> str:
    """The output of :func:`evaluate_off_policy` as one JSON object keyed by estimator."""
    return json.dumps({k: v.as_dict() for k, v in results.items()}, indent=indent)


@dataclass(frozen=True, slots=True)
class _Term:
    """An estimator as ``sum_s numerator_s / sum_s denominator_s`` plus weight diagnostics."""

    numerator: Float64Array
    denominator: Float64Array
    ess: float
    clipped_fraction: float
    mean_weight: float


def _ess(w: Float64Array) -> float:
    sq = float(np.dot(w, w))
    return float(w.sum()) ** 2 / sq if sq > 0 else 0.0


def _clip(w: Float64Array, max_weight: float | None) -> tuple[Float64Array, float]:
    if max_weight is None:
        return w, 0.0
    over = w > max_weight
    clipped: Float64Array = np.where(over, max_weight, w)
    return clipped, float(over.mean())


def _cluster_sums(
    columns: Float64Array, slates: LoggedSlates, labels: npt.ArrayLike
) -> Float64Array:
    """Per-slate ``columns`` summed per cluster (rows in the order of the sorted labels): the
    units the bootstrap then resamples."""
    raw = np.asarray(labels)
    if raw.shape != (slates.n_rows,):
        raise ValueError(f"clusters must hold one label per row ({slates.n_rows}), got {raw.shape}")
    _, row_cluster = np.unique(raw, return_inverse=True)
    first = np.full(slates.n_slates, -1, dtype=np.int64)
    first[slates.slate[::-1]] = row_cluster[::-1]
    if np.any(first[slates.slate] != row_cluster):
        raise ValueError("clusters must give every row of a slate the same label")
    out = np.zeros((int(row_cluster.max()) + 1, columns.shape[1]))
    np.add.at(out, first, columns)
    return out


def _bootstrap_sums(
    columns: Float64Array, n_bootstrap: int, rng: np.random.Generator, chunk_elements: int
) -> Float64Array:
    """Column sums over ``n_bootstrap`` with-replacement resamples of the rows (slates).

    Each resample is a vector of multiplicities (counts) built with one ``bincount``; the sums
    are then one matrix product, so the cost is ``O(B * n)`` with no loop over slates.
    """
    m = columns.shape[0]
    out = np.empty((n_bootstrap, columns.shape[1]))
    per_chunk = max(1, chunk_elements // m)
    for a in range(0, n_bootstrap, per_chunk):
        b = min(n_bootstrap, a + per_chunk)
        idx = rng.integers(0, m, size=(b - a, m))
        idx += (np.arange(b - a) * m)[:, None]
        counts = np.bincount(idx.ravel(), minlength=(b - a) * m).reshape(b - a, m)
        out[a:b] = counts.astype(np.float64) @ columns
    return out


def evaluate_off_policy(
    logs: LoggedFeedback | LoggedSlates,
    target: TargetPropensities,
    *,
    slot_rewards: npt.ArrayLike | None = None,
    reward_predictions: RewardPredictions | None = None,
    max_weight: float | None = None,
    n_bootstrap: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
    chunk_elements: int = 1 << 22,
    clusters: npt.ArrayLike | None = None,
) -> dict[str, OPEResult]:
    """Estimate the target policy's expected slate reward from logged slates, with CIs.

    ``slot_rewards`` is the reward of every logged row (e.g. a learned reward model's output
    on the row's signals); it defaults to ``click`` (0/1) for a :class:`LoggedFeedback` and is
    required for :class:`LoggedSlates`. ``target`` gives the target's probabilities per row
    (from a column, :func:`load_target_propensities`, or :func:`plackett_luce_target`).
    ``reward_predictions`` (else ``target.reward_predictions``) feeds ``dm`` and the DR
    estimators; without either, DR uses a cross-fitted per-position mean baseline and ``dm``
    is omitted. ``ips``, ``snips`` and ``dr`` run when the target gives ``propensity``;
    ``iips`` and ``position_dr`` when it gives ``position_propensity``. The log must then know
    the logging side's column on every row (and, for the slate estimators, hold whole slates),
    else :class:`~recsys.data.logged.LoggedFeedbackError` names what is missing; a target
    column that is 0 on every row is refused too (``ValueError``: no logged action has
    mass under the target, so IPS is 0 and SNIPS undefined by construction). ``max_weight``
    clips every importance weight (slate and position) at that value. The bootstrap draws
    ``n_bootstrap`` slate resamples from ``numpy.random.default_rng(seed)``; see the module
    docstring for the formulas. ``clusters`` (one label per logged row, e.g. the user id;
    every row of a slate must share it) makes the bootstrap resample whole clusters instead:
    a user's slates are not independent draws, and resampling them one by one understates
    the spread.

    Returns ``{estimator name: OPEResult}`` in :data:`ESTIMATORS` order (``logged`` is the
    on-policy value of the logging policy, for reference).
    """
    slates = logs if isinstance(logs, LoggedSlates) else LoggedSlates.from_feedback(logs)
    n, m = slates.n_rows, slates.n_slates
    if slot_rewards is None:
        if not isinstance(logs, LoggedFeedback):
            raise ValueError("slot_rewards is required when logs are LoggedSlates")
        slot_rewards = logs.click.astype(np.float64)
    r = _float_rows(slot_rewards, "slot_rewards", n)
    if target.n_rows != n:
        raise ValueError(f"target has {target.n_rows} rows but the log has {n}")
    if reward_predictions is None:
        reward_predictions = target.reward_predictions
    if reward_predictions is not None and reward_predictions.logged.shape != (n,):
        raise ValueError(
            f"reward_predictions has {reward_predictions.logged.shape[0]} rows but the log has {n}"
        )
    if max_weight is not None and not (math.isfinite(max_weight) and max_weight > 0):
        raise ValueError(f"max_weight must be finite and > 0, got {max_weight}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")

    for name in ("propensity", "position_propensity"):
        p = getattr(target, name)
        if p is not None and not np.any(p > 0):
            raise ValueError(
                f"the target's {name} is 0 on every logged row: it puts no mass on any logged "
                "action, so importance weighting has nothing to reweight (IPS is 0 and SNIPS "
                "undefined by construction)"
            )

    per_slate = slates.per_slate
    ones = np.ones(m)
    slate_reward = per_slate(r)
    plain = {"ess": float(m), "clipped_fraction": 0.0, "mean_weight": 1.0}
    terms: dict[str, _Term] = {"logged": _Term(slate_reward, ones, **plain)}

    w: Float64Array | None = None
    slate_diag = plain
    if target.propensity is not None:
        logging_p = slates.require_known(
            "propensity",
            "ips, snips and dr need it on every row (a slate's weight is a product over its slots)",
        )
        slates.require_whole_slates(
            "ips, snips and dr need every slot of a slate, the item-position estimators (iips, "
            "position_dr: give only the target's marginals) only the logged ones"
        )
        with np.errstate(divide="ignore"):
            log_w = per_slate(np.log(target.propensity)) - per_slate(np.log(logging_p))
        if max_weight is not None:
            log_w = np.minimum(log_w, math.log(max_weight) + 1.0)  # keeps exp finite; clipped below
        with np.errstate(over="ignore"):
            w_raw = np.exp(log_w)
        if not np.isfinite(w_raw).all():
            raise ValueError("a slate importance weight overflows float64; set max_weight")
        w, clipped = _clip(w_raw, max_weight)
        slate_diag = {"ess": _ess(w), "clipped_fraction": clipped, "mean_weight": float(w.mean())}
        terms["ips"] = _Term(w * slate_reward, ones, **slate_diag)
        terms["snips"] = _Term(w * slate_reward, w, **slate_diag)

    w_pos: Float64Array | None = None
    pos_diag = plain
    if target.position_propensity is not None:
        logging_marginal = slates.require_known(
            "position_propensity", "iips and position_dr need it on every row"
        )
        w_pos_raw = target.position_propensity / logging_marginal
        w_pos, pos_clipped = _clip(w_pos_raw, max_weight)
        n_pos = int(slates.slate_size.max())
        s1 = np.bincount(slates.position, weights=w_pos, minlength=n_pos)
        s2 = np.bincount(slates.position, weights=w_pos * w_pos, minlength=n_pos)
        ess_pos = np.divide(s1 * s1, s2, out=np.zeros(n_pos), where=s2 > 0)
        pos_diag = {
            "ess": float(ess_pos.mean()),
            "clipped_fraction": pos_clipped,
            "mean_weight": float(w_pos.mean()),
        }
        terms["iips"] = _Term(per_slate(w_pos * r), ones, **pos_diag)

    predictions = reward_predictions
    if predictions is not None:
        terms["dm"] = _Term(per_slate(predictions.target), ones, **plain)
    else:
        predictions = _position_baseline(slates, r)
    if w is not None:
        q_target = per_slate(predictions.target)
        terms["dr"] = _Term(
            q_target + w * (slate_reward - per_slate(predictions.logged)), ones, **slate_diag
        )
    if w_pos is not None:
        terms["position_dr"] = _Term(
            per_slate(predictions.target + w_pos * (r - predictions.logged)), ones, **pos_diag
        )

    names = [e for e in ESTIMATORS if e in terms]
    columns = np.column_stack(
        [terms[e].numerator for e in names] + [terms[e].denominator for e in names]
    )
    if clusters is not None:
        columns = _cluster_sums(columns, slates, clusters)
    k = len(names)
    with np.errstate(divide="ignore", invalid="ignore"):
        totals = columns.sum(axis=0)
        values = totals[:k] / totals[k:]
        if n_bootstrap > 0:
            rng = np.random.default_rng(seed)
            boot = _bootstrap_sums(columns, n_bootstrap, rng, chunk_elements)
            boot_values = boot[:, :k] / boot[:, k:]
            alpha = 1.0 - confidence
            low, high = np.quantile(boot_values, [alpha / 2, 1 - alpha / 2], axis=0)
            spread = boot_values.std(axis=0, ddof=1) if n_bootstrap > 1 else np.full(k, np.nan)
        else:
            low = high = spread = np.full(k, np.nan)
    return {
        e: OPEResult(
            estimator=e,
            value=float(values[i]),
            ci_low=float(low[i]),
            ci_high=float(high[i]),
            std_error=float(spread[i]),
            n_slates=m,
            n_rows=n,
            ess=terms[e].ess,
            clipped_fraction=terms[e].clipped_fraction,
            mean_weight=terms[e].mean_weight,
            confidence=confidence,
            n_bootstrap=n_bootstrap,
        )
        for i, e in enumerate(names)
    }
