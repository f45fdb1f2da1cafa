"""Two-tower retrieval model trained on implicit feedback with in-batch sampled softmax.

The first stage of the YouTube design (Covington et al., 2016): a user tower and an item tower
map into one space where nearest-neighbour search finds each user's candidates.

- **Item tower**: ``v_i = normalize(MLP(E_id[i] + W_f x_i))`` over the item id and its side
  features ``x_i`` (genres and release period for MovieLens, topic mixtures in the simulator).
  During training the id is replaced by a shared "unknown id" row with probability
  ``id_dropout``, so the features alone learn to place an item; a brand-new item then gets a
  usable embedding from its features (cold start, :meth:`TwoTowerModel.item_vectors`).
- **User tower**: ``u = normalize(MLP([mean_j E_hist[j], W_u x_u]))``, a bag (mean) over the
  user's most recent ``max_history`` items plus user features. The history table is separate
  from the item tower's id table: input and output roles of an item differ (YouTube DNN uses
  separate watch embeddings too), and on ML-100K it measured better than sharing. The target
  item is always removed from its own history, and history items are dropped at random
  (``history_dropout``): a denoising objective, so the tower learns to predict held-out items
  from partial histories, which is what serving asks of it.
- **Loss**: softmax over the batch's target items, logits ``cos(u, v) / temperature`` minus
  ``logq_alpha * log q_j`` where ``q_j`` is item ``j``'s frequency among training targets
  (Yi et al., 2019). In-batch negatives are sampled in proportion to popularity; without the
  correction popular items are over-punished (on ML-100K, NDCG@10 falls from ~0.31 to ~0.05).
  Duplicate targets in a batch are masked rather than treated as negatives.
- **Geometry**: both towers are L2-normalised, so retrieval is cosine similarity, served as
  inner product over unit vectors (:class:`recsys.candidates.faiss_index.FaissRetriever`).
  Scores returned with candidates are cosines in ``[-1, 1]``.

Training early-stops on validation NDCG@10 (full ranking over all items, the user's training
items masked) and keeps the best epoch's weights. :class:`TwoTowerModel` is the exported,
torch-free result: numpy weights, item embeddings, stored user vectors for known users, and
:meth:`TwoTowerModel.user_vector` to recompute a user's vector online from fresh history
(:meth:`TwoTowerModel.history_vectors` for a batch of event-derived states at once).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from recsys.candidates.embeddings import EmbeddingModel, torch_threads
from recsys.candidates.metrics import full_ranking_metrics, random_split
from recsys.config import CandidateSettings
from recsys.types import FloatArray, IntArray, InteractionDataset, InvalidRequestError

# Names of the exported tensors, in the order the numpy forward uses them.
_WEIGHT_NAMES = (
    "item_id",
    "item_feat",
    "item_w1",
    "item_b1",
    "item_w2",
    "item_b2",
    "hist",
    "user_feat",
    "user_w1",
    "user_b1",
    "user_w2",
    "user_b2",
)


@dataclass(frozen=True, slots=True)
class TwoTowerOptions:
    """Model and optimiser knobs that operators rarely change (settings hold the rest).

    Defaults were tuned on ML-100K's validation split (RecBole random 80/10/10, seed 2020):
    ``temperature`` 0.1 beat 0.05 and 0.07; ``logq_alpha`` 1.2 beat 1.0 (0.8 was clearly
    worse: ranking metrics reward popularity); user features help only with
    ``user_feature_dropout`` (otherwise 943 users' demographics are memorised); 10% id dropout
    buys cold-start embeddings at no measurable cost to warm items. ``num_threads`` caps
    torch's intra-op threads while training: the matrices are small, so a second thread gains
    little, and on a shared 2-core machine oversubscribed threads made an epoch ~14x slower.
    """

    temperature: float = 0.1
    logq_alpha: float = 1.2
    learning_rate: float = 2e-3
    batch_size: int = 1024
    weight_decay: float = 0.0
    history_dropout: float = 0.5
    id_dropout: float = 0.1
    user_feature_dropout: float = 0.5
    max_history: int = 256
    hidden: int | None = None
    patience: int = 5
    validation_fraction: float = 0.1
    max_val_users: int = 2000
    init_std: float = 0.05
    num_threads: int = 1

    def __post_init__(self) -> None:
        checks = {
            "temperature": self.temperature > 0,
            "logq_alpha": self.logq_alpha >= 0,
            "learning_rate": self.learning_rate > 0,
            "batch_size": self.batch_size >= 2,
            "weight_decay": self.weight_decay >= 0,
            "history_dropout": 0 <= self.history_dropout < 1,
            "id_dropout": 0 <= self.id_dropout < 1,
            "user_feature_dropout": 0 <= self.user_feature_dropout <= 1,
            "max_history": self.max_history >= 1,
            "hidden": self.hidden is None or self.hidden >= 1,
            "patience": self.patience >= 1,
            "validation_fraction": 0 <= self.validation_fraction < 1,
            "max_val_users": self.max_val_users >= 1,
            "init_std": self.init_std > 0,
            "num_threads": self.num_threads >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{b}={getattr(self, b)!r}" for b in bad)
            raise ValueError(f"invalid TwoTowerOptions: {values}")


def _normalize(x: FloatArray) -> FloatArray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    out: FloatArray = (x / np.maximum(norm, 1e-12)).astype(np.float32, copy=False)
    return out


@dataclass(frozen=True, eq=False)
class TwoTowerModel:
    """A trained two-tower model as numpy arrays: embeddings plus both towers' weights.

    ``item_embeddings`` ``[num_items, dim]`` and ``user_embeddings`` ``[num_users, dim]`` are
    unit vectors (a user without any history has a zero row: "no embedding", which the
    retriever answers with its popularity fallback). ``weights`` holds the towers so that
    :meth:`user_vector` and :meth:`item_vectors` reproduce the training-time forward pass
    without torch. ``config`` records sizes and options; ``metrics`` training diagnostics.
    """

    item_embeddings: FloatArray
    user_embeddings: FloatArray
    weights: Mapping[str, FloatArray]
    config: Mapping[str, Any]
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = set(_WEIGHT_NAMES) - set(self.weights)
        if missing:
            raise ValueError(f"two-tower weights are missing {sorted(missing)}")
        for name, arr in (("item", self.item_embeddings), ("user", self.user_embeddings)):
            if arr.ndim != 2 or arr.dtype != np.float32 or arr.shape[1] != self.dim:
                raise ValueError(
                    f"{name}_embeddings must be float32 [n, {self.dim}], got {arr.shape} "
                    f"{arr.dtype}"
                )
            if not np.isfinite(arr).all():
                raise ValueError(f"{name}_embeddings contain NaN or inf")
        if self.weights["item_id"].shape != (self.num_items + 1, self.dim):
            raise ValueError("item_id table does not match the catalog size")

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self.config["dim"])

    @property
    def num_items(self) -> int:
        """Catalog size the item tower was trained on."""
        return int(self.item_embeddings.shape[0])

    @property
    def num_users(self) -> int:
        """Users with a stored vector (rows of :attr:`user_embeddings`)."""
        return int(self.user_embeddings.shape[0])

    @property
    def max_history(self) -> int:
        """How many of the most recent history items the user tower reads."""
        return int(self.config["max_history"])

    @property
    def user_feature_dim(self) -> int:
        """Width of the user-feature input (0 when the data had none)."""
        return int(self.weights["user_feat"].shape[0])

    @property
    def item_feature_dim(self) -> int:
        """Width of the item-feature input (0 when the data had none)."""
        return int(self.weights["item_feat"].shape[0])

    def embedding_model(self) -> EmbeddingModel:
        """The tables the retriever and serving need, in the shared :class:`EmbeddingModel`."""
        return EmbeddingModel(
            user_embeddings=self.user_embeddings,
            item_embeddings=self.item_embeddings,
            global_bias=0.0,
            metrics=dict(self.metrics),
        )

    def logits(self, user_idx: npt.ArrayLike, item_idx: npt.ArrayLike) -> FloatArray:
        """Cosine scores of aligned (user, item) pairs from the stored vectors (vectorised)."""
        u = self.user_embeddings[np.asarray(user_idx, dtype=np.int64)]
        v = self.item_embeddings[np.asarray(item_idx, dtype=np.int64)]
        out: FloatArray = np.einsum("nd,nd->n", u, v)
        return out

    def user_vector(
        self, history_item_ids: npt.ArrayLike, user_features: npt.ArrayLike | None = None
    ) -> FloatArray:
        """The user tower on one history (most recent first, as in ``UserState.clicked``).

        Only the first :attr:`max_history` ids are read. An empty history with no features
        gives the zero vector (no embedding: the retriever falls back to popularity).
        Raises :class:`InvalidRequestError` (field ``history``) for ids outside the catalog.
        """
        history = self._check_history(history_item_ids)
        feats = None if user_features is None else np.asarray(user_features, np.float32)[None]
        out: FloatArray = self.user_vectors([history], feats)[0]
        return out

    def user_vectors(
        self, histories: Sequence[npt.ArrayLike], user_features: npt.ArrayLike | None = None
    ) -> FloatArray:
        """Batched :meth:`user_vector`: one row per history, ``[len(histories), dim]``."""
        hist = [self._check_history(h)[: self.max_history] for h in histories]
        lengths = np.array([h.size for h in hist], dtype=np.int64)
        flat = np.concatenate(hist) if hist else np.zeros(0, np.int64)
        feats = self._check_user_features(user_features, len(hist))
        return _user_forward(self.weights, flat, lengths, feats)

    def history_vectors(self, histories: npt.ArrayLike) -> FloatArray:
        """The user tower on a padded history matrix: ``[B, K]`` ids, ``-1`` = empty slot.

        The batch form of :meth:`user_vector` for event-derived user states (the last ``K``
        clicked items, newest first, ``-1`` padded; a ``-1`` may sit anywhere, e.g. for a
        click the fold could not resolve). Each row reads its first :attr:`max_history`
        valid ids; a row without any gives the zero vector. One vectorised forward, no
        Python loop over rows: this is the retriever's
        :data:`~recsys.candidates.blocks.HistoryEncoder`. Raises
        :class:`InvalidRequestError` (field ``history``) for ids outside ``[-1, num_items)``.
        """
        ids = np.asarray(histories)
        if ids.ndim != 2 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise InvalidRequestError(
                "history", f"must be a [batch, K] integer id matrix, got shape {ids.shape}"
            )
        ids = ids.astype(np.int64, copy=False)
        bad = ids[(ids < -1) | (ids >= self.num_items)]
        if bad.size:
            raise InvalidRequestError(
                "history", f"{bad.size} ids are not in the catalog, e.g. {int(bad[0])}"
            )
        valid = ids >= 0
        if ids.shape[1] > self.max_history:
            valid &= np.cumsum(valid, axis=1) <= self.max_history
        return _user_forward_padded(self.weights, ids, valid)

    def item_vectors(
        self, item_features: npt.ArrayLike, item_ids: npt.ArrayLike | None = None
    ) -> FloatArray:
        """Item tower on features; ``item_ids=None`` embeds new items from features alone.

        New items use the "unknown id" row the model learned through id dropout, so their
        embeddings live in the same space as trained items and can be added to an index.
        """
        x = np.asarray(item_features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.item_feature_dim:
            raise InvalidRequestError(
                "item_features", f"must be [n, {self.item_feature_dim}], got {x.shape}"
            )
        if not np.isfinite(x).all():
            raise InvalidRequestError("item_features", "contain NaN or inf")
        if item_ids is None:
            ids = np.full(x.shape[0], self.num_items, dtype=np.int64)
        else:
            ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
            if ids.shape[0] != x.shape[0] or ((ids < 0) | (ids >= self.num_items)).any():
                raise InvalidRequestError("item_ids", "must be catalog ids, one per feature row")
        return _item_forward(self.weights, ids, x)

    def _check_history(self, history: npt.ArrayLike) -> IntArray:
        ids = np.asarray(history)
        if ids.size == 0:
            return np.zeros(0, dtype=np.int64)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise InvalidRequestError("history", "must be a 1-D list of integer item ids")
        bad = ids[(ids < 0) | (ids >= self.num_items)]
        if bad.size:
            raise InvalidRequestError(
                "history", f"{bad.size} ids are not in the catalog, e.g. {int(bad[0])}"
            )
        return ids.astype(np.int64, copy=False)

    def _check_user_features(self, user_features: npt.ArrayLike | None, n: int) -> FloatArray:
        if user_features is None:
            return np.zeros((n, self.user_feature_dim), dtype=np.float32)
        feats = np.asarray(user_features, dtype=np.float32).reshape(n, -1)
        if feats.shape[1] != self.user_feature_dim:
            raise InvalidRequestError(
                "user_features", f"must have width {self.user_feature_dim}, got {feats.shape[1]}"
            )
        if not np.isfinite(feats).all():
            raise InvalidRequestError("user_features", "contain NaN or inf")
        return feats

    def to_tensors(self) -> dict[str, FloatArray]:
        """Every array, for a safetensors file (weights prefixed ``w.``)."""
        out = {f"w.{k}": np.ascontiguousarray(v) for k, v in self.weights.items()}
        out["item_embeddings"] = self.item_embeddings
        out["user_embeddings"] = self.user_embeddings
        return out

    @classmethod
    def from_tensors(
        cls,
        tensors: Mapping[str, FloatArray],
        config: Mapping[str, Any],
        metrics: Mapping[str, float] | None = None,
    ) -> TwoTowerModel:
        """Inverse of :meth:`to_tensors`; raises ``ValueError`` on missing or bad arrays."""
        try:
            weights = {k: np.asarray(tensors[f"w.{k}"], np.float32) for k in _WEIGHT_NAMES}
            return cls(
                item_embeddings=np.asarray(tensors["item_embeddings"], np.float32),
                user_embeddings=np.asarray(tensors["user_embeddings"], np.float32),
                weights=weights,
                config=dict(config),
                metrics=dict(metrics or {}),
            )
        except KeyError as exc:
            raise ValueError(f"two-tower tensors are missing {exc}") from None


def _mlp(x: FloatArray, w1: FloatArray, b1: FloatArray, w2: FloatArray, b2: FloatArray) -> Any:
    return np.maximum(x @ w1.T + b1, 0.0) @ w2.T + b2


def _item_forward(w: Mapping[str, FloatArray], ids: IntArray, feats: FloatArray) -> FloatArray:
    e = w["item_id"][ids] + feats @ w["item_feat"]
    return _normalize(_mlp(e, w["item_w1"], w["item_b1"], w["item_w2"], w["item_b2"]))


def _user_forward(
    w: Mapping[str, FloatArray], flat: IntArray, lengths: IntArray, feats: FloatArray
) -> FloatArray:
    dim = w["hist"].shape[1]
    n = lengths.shape[0]
    pooled = np.zeros((n, dim), dtype=np.float32)
    if flat.size:
        rows = np.repeat(np.arange(n), lengths)
        np.add.at(pooled, rows, w["hist"][flat])
    has = lengths > 0
    pooled[has] /= lengths[has, None].astype(np.float32)
    return _user_head(w, pooled, has, feats)


def _user_forward_padded(
    w: Mapping[str, FloatArray], histories: IntArray, valid: npt.NDArray[np.bool_]
) -> FloatArray:
    """The user tower on a ``[B, K]`` id matrix where ``valid`` marks the real entries."""
    table = w["hist"]
    gathered = table[np.where(valid, histories, table.shape[0] - 1)]  # [B, K, dim]
    gathered *= valid[:, :, None]
    counts = valid.sum(axis=1)
    has = counts > 0
    pooled = gathered.sum(axis=1, dtype=np.float32)
    pooled[has] /= counts[has, None].astype(np.float32)
    feats = np.zeros((histories.shape[0], w["user_feat"].shape[0]), dtype=np.float32)
    return _user_head(w, pooled, has, feats)


def _user_head(
    w: Mapping[str, FloatArray],
    pooled: FloatArray,
    has: npt.NDArray[np.bool_],
    feats: FloatArray,
) -> FloatArray:
    pooled[~has] = w["hist"][-1]  # the learned "no history" row
    x = np.concatenate([pooled, feats @ w["user_feat"]], axis=1)
    out = _normalize(_mlp(x, w["user_w1"], w["user_b1"], w["user_w2"], w["user_b2"]))
    # No history and no features: nothing personal to say, so no embedding at all.
    out[~has & ~feats.any(axis=1)] = 0.0
    return out


class _TwoTowerNet(nn.Module):
    """The torch twin of the numpy forward in :class:`TwoTowerModel` (kept in lock step)."""

    def __init__(
        self,
        num_items: int,
        item_feature_dim: int,
        user_feature_dim: int,
        dim: int,
        hidden: int,
        init_std: float,
        gen: torch.Generator,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        # Row ``num_items`` is "unknown id" (item tower) / "no history" (history table).
        self.item_id = nn.Parameter(torch.randn(num_items + 1, dim, generator=gen) * init_std)
        self.hist = nn.Parameter(torch.randn(num_items + 1, dim, generator=gen) * init_std)
        self.item_feat = nn.Parameter(
            torch.randn(item_feature_dim, dim, generator=gen) / math.sqrt(max(item_feature_dim, 1))
        )
        self.user_feat = nn.Parameter(
            torch.randn(user_feature_dim, dim, generator=gen) / math.sqrt(max(user_feature_dim, 1))
        )
        self.item_l1 = _linear(dim, hidden, gen)
        self.item_l2 = _linear(hidden, dim, gen)
        self.user_l1 = _linear(2 * dim, hidden, gen)
        self.user_l2 = _linear(hidden, dim, gen)

    def items(self, ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        e = self.item_id[ids] + feats @ self.item_feat
        return nn.functional.normalize(self.item_l2(torch.relu(self.item_l1(e))), dim=-1)

    def users(self, flat: torch.Tensor, offsets: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.embedding_bag(flat, self.hist, offsets, mode="mean")
        x = torch.cat([pooled, feats @ self.user_feat], dim=-1)
        return nn.functional.normalize(self.user_l2(torch.relu(self.user_l1(x))), dim=-1)

    def export(self) -> dict[str, FloatArray]:
        with torch.no_grad():
            tensors = {
                "item_id": self.item_id,
                "item_feat": self.item_feat,
                "item_w1": self.item_l1.weight,
                "item_b1": self.item_l1.bias,
                "item_w2": self.item_l2.weight,
                "item_b2": self.item_l2.bias,
                "hist": self.hist,
                "user_feat": self.user_feat,
                "user_w1": self.user_l1.weight,
                "user_b1": self.user_l1.bias,
                "user_w2": self.user_l2.weight,
                "user_b2": self.user_l2.bias,
            }
            return {k: v.detach().numpy().astype(np.float32).copy() for k, v in tensors.items()}


def _linear(n_in: int, n_out: int, gen: torch.Generator) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    bound = 1.0 / math.sqrt(n_in)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=gen)
        layer.bias.uniform_(-bound, bound, generator=gen)
    return layer


@dataclass(frozen=True, slots=True)
class _Histories:
    """Per-user item histories in CSR form, most recent last, at most ``max_history`` each."""

    indptr: IntArray
    items: IntArray

    @classmethod
    def build(
        cls,
        user_idx: IntArray,
        item_idx: IntArray,
        timestamp: npt.NDArray[np.float64],
        num_users: int,
        max_history: int,
    ) -> _Histories:
        # Sort by (user, time, row); keep each (user, item) once, at its latest occurrence.
        order = np.lexsort((np.arange(user_idx.size), timestamp, user_idx))
        u, i = user_idx[order], item_idx[order]
        key = u * np.int64(1 << 32) + i
        _, last_from_end = np.unique(key[::-1], return_index=True)
        keep = np.sort(key.size - 1 - last_from_end)
        u, i = u[keep], i[keep]
        counts = np.bincount(u, minlength=num_users)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        from_end = counts[u] - 1 - (np.arange(u.size) - starts[u])
        recent = from_end < max_history
        u, i = u[recent], i[recent]
        indptr = np.zeros(num_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(u, minlength=num_users), out=indptr[1:])
        return cls(indptr=indptr, items=i.astype(np.int64))

    def lengths(self) -> IntArray:
        out: IntArray = np.diff(self.indptr)
        return out

    def batch(
        self,
        users: IntArray,
        targets: IntArray | None,
        dropout: float,
        rng: np.random.Generator,
        pad: int,
    ) -> tuple[IntArray, IntArray, IntArray]:
        """Flat ids, bag offsets and true lengths for ``users``; empty bags hold ``pad``.

        ``targets`` (one per user) are removed from their own bag; ``dropout`` drops each
        remaining item independently. Vectorised over the whole batch.
        """
        lengths = self.indptr[users + 1] - self.indptr[users]
        rows = np.repeat(np.arange(users.size), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        items = self.items[np.repeat(self.indptr[users], lengths) + offsets]
        keep = np.ones(items.size, dtype=np.bool_)
        if targets is not None:
            keep &= items != targets[rows]
        if dropout > 0:
            keep &= rng.random(items.size) >= dropout
        rows, items = rows[keep], items[keep]
        true_len = np.bincount(rows, minlength=users.size)
        empty = np.flatnonzero(true_len == 0)
        rows = np.concatenate([rows, empty])
        items = np.concatenate([items, np.full(empty.size, pad, dtype=np.int64)])
        order = np.argsort(rows, kind="stable")
        counts = np.bincount(rows, minlength=users.size)
        bag_offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return items[order], bag_offsets, true_len.astype(np.int64)


def _rows_or_all(rows: IntArray | None, n: int) -> IntArray:
    return np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)


def train_two_tower(
    dataset: InteractionDataset,
    settings: CandidateSettings,
    *,
    seed: int = 0,
    train_rows: IntArray | None = None,
    valid_rows: IntArray | None = None,
    history_rows: IntArray | None = None,
    options: TwoTowerOptions | None = None,
    progress: bool = False,
) -> TwoTowerModel:
    """Train the two-tower model on ``dataset``'s interactions (every row is a positive).

    ``train_rows``/``valid_rows`` select rows for fitting and for early stopping; when both
    are ``None``, ``options.validation_fraction`` of each user's rows is held out at random.
    With ``train_rows`` but no ``valid_rows`` it trains the full ``settings.epochs`` without
    early stopping. Stored user vectors read ``history_rows`` (default: train + valid rows),
    so a deployed model knows everything logged. ``settings`` supplies ``dim`` and
    ``epochs`` (the maximum). Every random draw comes from generators seeded with ``seed``.
    """
    opts = options or TwoTowerOptions()
    with torch_threads(opts.num_threads):
        return _train(dataset, settings, seed, train_rows, valid_rows, history_rows, opts, progress)


def _train(
    dataset: InteractionDataset,
    settings: CandidateSettings,
    seed: int,
    train_rows: IntArray | None,
    valid_rows: IntArray | None,
    history_rows: IntArray | None,
    opts: TwoTowerOptions,
    progress: bool,
) -> TwoTowerModel:
    if dataset.num_interactions == 0:
        raise ValueError(f"dataset {dataset.name!r} has no interactions to train on")
    if dataset.num_items < 2:
        raise ValueError("a catalog of fewer than 2 items leaves nothing to rank")
    if train_rows is None and valid_rows is None and opts.validation_fraction > 0:
        frac = opts.validation_fraction
        split = random_split(dataset, seed, (1.0 - frac, frac, 0.0))
        train_rows, valid_rows = split.train, split.valid
    train = _rows_or_all(train_rows, dataset.num_interactions)
    valid = np.zeros(0, np.int64) if valid_rows is None else np.asarray(valid_rows, np.int64)
    if train.size == 0:
        raise ValueError("no training rows")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    num_items, dim = dataset.num_items, settings.dim
    hidden = opts.hidden or 2 * dim
    item_x = torch.tensor(dataset.item_features)  # a copy: inputs may be read-only
    user_x = torch.tensor(dataset.user_features)
    net = _TwoTowerNet(num_items, item_x.shape[1], user_x.shape[1], dim, hidden, opts.init_std, gen)
    optimizer = torch.optim.Adam(
        net.parameters(), lr=opts.learning_rate, weight_decay=opts.weight_decay
    )

    t_users, t_items = dataset.user_idx[train], dataset.item_idx[train]
    hist = _Histories.build(
        t_users, t_items, dataset.timestamp[train], dataset.num_users, opts.max_history
    )
    freq = np.bincount(t_items, minlength=num_items).astype(np.float64)
    log_q = torch.from_numpy(opts.logq_alpha * np.log(np.maximum(freq / freq.sum(), 1e-12)))
    log_q = log_q.float()

    val_users = np.unique(dataset.user_idx[valid]) if valid.size else np.zeros(0, np.int64)
    if val_users.size > opts.max_val_users:
        val_users = np.sort(rng.choice(val_users, opts.max_val_users, replace=False))
    val_rows = valid[np.isin(dataset.user_idx[valid], val_users)]

    k_stop = min(10, num_items)  # early stopping watches NDCG@10 (@catalog if smaller)

    def evaluate() -> dict[str, float]:
        net.eval()
        with torch.no_grad():
            item_vecs = net.items(torch.arange(num_items), item_x).numpy()
        trained = _export(net, dataset, hist, item_vecs, {}, opts, dim, hidden, user_x.numpy())
        net.train()
        return full_ranking_metrics(
            lambda users: trained.user_embeddings[users] @ item_vecs.T,
            dataset,
            train,
            val_rows,
            ks=sorted({k_stop, min(100, num_items)}),
        )

    n_train = train.size
    batches = math.ceil(n_train / opts.batch_size)
    best_ndcg, best_epoch, best_state = -math.inf, 0, copy.deepcopy(net.state_dict())
    best_val: dict[str, float] = {}
    stale, epochs_run, train_loss = 0, 0, math.nan
    with Progress(
        TextColumn("[bold]two-tower[/] epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f} val ndcg@10 {task.fields[ndcg]:.4f}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),  # stdout stays machine-readable for CLI JSON
        disable=not progress,
    ) as bar:
        task = bar.add_task(
            "train", total=settings.epochs * batches, epoch=0, loss=math.nan, ndcg=math.nan
        )
        for epoch in range(settings.epochs):
            perm = rng.permutation(n_train)
            loss_sum, seen = 0.0, 0
            for start in range(0, n_train, opts.batch_size):
                b = perm[start : start + opts.batch_size]
                if b.size < 2:
                    continue  # a softmax over one item has no negatives
                loss = _batch_loss(
                    net, hist, t_users[b], t_items[b], item_x, user_x, log_q, opts, rng, gen
                )
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()
                loss_sum += float(loss.detach()) * b.size
                seen += b.size
                bar.update(task, advance=1, epoch=epoch + 1, loss=loss_sum / seen)
            train_loss = loss_sum / max(seen, 1)
            epochs_run = epoch + 1
            if val_rows.size == 0:
                continue
            val = evaluate()
            ndcg = val[f"ndcg@{k_stop}"]
            bar.update(task, ndcg=ndcg)
            if ndcg > best_ndcg:
                best_ndcg, best_epoch, best_val, stale = ndcg, epoch + 1, val, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                stale += 1
                if stale >= opts.patience:
                    bar.update(task, total=epochs_run * batches, completed=epochs_run * batches)
                    break
    if val_rows.size:
        net.load_state_dict(best_state)
    else:
        best_epoch = epochs_run

    net.eval()
    with torch.no_grad():
        item_vecs = net.items(torch.arange(num_items), item_x).numpy()
    serve_rows = (
        np.concatenate([train, valid])
        if history_rows is None
        else np.asarray(history_rows, dtype=np.int64)
    )
    serve_hist = _Histories.build(
        dataset.user_idx[serve_rows],
        dataset.item_idx[serve_rows],
        dataset.timestamp[serve_rows],
        dataset.num_users,
        opts.max_history,
    )
    metrics: dict[str, float] = {
        "train_loss": train_loss,
        "num_train": float(n_train),
        "num_val": float(val_rows.size),
        "epochs": float(epochs_run),
        "best_epoch": float(best_epoch),
    }
    metrics.update({f"val_{k}": v for k, v in best_val.items() if k != "num_users"})
    metrics["train_seconds"] = time.perf_counter() - started
    return _export(net, dataset, serve_hist, item_vecs, metrics, opts, dim, hidden, user_x.numpy())


def _batch_loss(
    net: _TwoTowerNet,
    hist: _Histories,
    users: IntArray,
    items: IntArray,
    item_x: torch.Tensor,
    user_x: torch.Tensor,
    log_q: torch.Tensor,
    opts: TwoTowerOptions,
    rng: np.random.Generator,
    gen: torch.Generator,
) -> torch.Tensor:
    """In-batch sampled softmax with log-Q correction for one batch of (user, target) pairs."""
    flat, offsets, _ = hist.batch(users, items, opts.history_dropout, rng, pad=net.num_items)
    feats = user_x[torch.from_numpy(users)]
    if opts.user_feature_dropout > 0 and feats.shape[1]:
        keep = torch.rand(feats.shape[0], 1, generator=gen) >= opts.user_feature_dropout
        feats = feats * keep.float()
    u = net.users(torch.from_numpy(flat), torch.from_numpy(offsets), feats)
    target = torch.from_numpy(items)
    ids = target
    if opts.id_dropout > 0:
        unknown = torch.rand(ids.shape[0], generator=gen) < opts.id_dropout
        ids = torch.where(unknown, torch.full_like(ids, net.num_items), ids)
    v = net.items(ids, item_x[target])
    logits = u @ v.T / opts.temperature - log_q[target][None, :]
    # Another row with the same target item is not a negative for this row.
    dup = target[:, None] == target[None, :]
    dup.fill_diagonal_(False)
    logits = logits.masked_fill(dup, -torch.inf)
    return nn.functional.cross_entropy(logits, torch.arange(users.size))


def _export(
    net: _TwoTowerNet,
    dataset: InteractionDataset,
    hist: _Histories,
    item_vecs: FloatArray,
    metrics: Mapping[str, float],
    opts: TwoTowerOptions,
    dim: int,
    hidden: int,
    user_features: FloatArray,
) -> TwoTowerModel:
    weights = net.export()
    lengths = hist.lengths()
    # Histories are stored oldest first; the tower is order-free, and max_history was
    # already applied when they were built.
    user_vecs = _user_forward(weights, hist.items, lengths, user_features)
    # A user with no interactions at all gets no embedding (popularity fallback), even if
    # features exist: stored vectors describe what users did; features-only vectors can be
    # computed on demand with user_vector().
    user_vecs[lengths == 0] = 0.0
    config = {
        "dim": dim,
        "hidden": hidden,
        "num_items": dataset.num_items,
        "max_history": opts.max_history,
        "temperature": opts.temperature,
        "logq_alpha": opts.logq_alpha,
        "item_feature_names": list(dataset.item_feature_names),
        "user_feature_names": list(dataset.user_feature_names),
        "dataset": dataset.name,
    }
    return TwoTowerModel(
        item_embeddings=np.ascontiguousarray(item_vecs, dtype=np.float32),
        user_embeddings=np.ascontiguousarray(user_vecs, dtype=np.float32),
        weights=weights,
        config=config,
        metrics=dict(metrics),
    )
