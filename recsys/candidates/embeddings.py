"""User and item embeddings for retrieval, learned from logged impressions.

This was the walking skeleton of the two-tower model: each tower is a plain embedding table
(a matrix factorisation), trained with binary cross-entropy on (user, item, clicked) triples.
The logs come from a uniformly random logging policy, so clicks are unbiased and no
propensity correction is needed here. The production model is now
:mod:`recsys.candidates.two_tower` (feature towers, sampled softmax with log-Q correction);
this MF stays as a baseline and keeps :class:`EmbeddingModel`, the tables both export, so
the retriever, artifact and serving code are shared.

Bias folding: the model is ``logit(u, i) = <p_u, q_i> + b_i + b``. To keep retrieval an exact
maximum-inner-product search, the item bias ``b_i`` is stored as the last coordinate of each
item embedding and the matching user coordinate is the constant ``1``. ``settings.dim`` is the
exported width, so ``dim - 1`` coordinates are learned factors. The global bias ``b`` shifts
every item equally, so it does not affect ranking; it is kept on the model to recover
calibrated click probabilities.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from torch import nn

from recsys.config import CandidateSettings
from recsys.types import FloatArray, IntArray


@dataclass(frozen=True, slots=True)
class EmbeddingModel:
    """Trained user and item embeddings whose inner product is the click logit (minus a constant).

    ``user_embeddings`` is float32 ``[num_users, dim]`` and ``item_embeddings`` float32
    ``[num_items, dim]``. The last user coordinate is ``1`` and the last item coordinate is the
    item bias (see the module docstring), so ``user @ item.T + global_bias`` is the logit.
    ``metrics`` holds training diagnostics such as ``train_loss`` and ``val_auc``.
    """

    user_embeddings: FloatArray
    item_embeddings: FloatArray
    global_bias: float = 0.0
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, arr in (("user", self.user_embeddings), ("item", self.item_embeddings)):
            if arr.ndim != 2 or arr.dtype != np.float32:
                raise ValueError(
                    f"{name}_embeddings must be a 2-D float32 array, got shape {arr.shape} "
                    f"dtype {arr.dtype}"
                )
        if self.user_embeddings.shape[1] != self.item_embeddings.shape[1]:
            raise ValueError(
                f"user and item embeddings disagree on dim: {self.user_embeddings.shape[1]} "
                f"vs {self.item_embeddings.shape[1]}"
            )

    @property
    def num_users(self) -> int:
        """Rows of the user table."""
        return int(self.user_embeddings.shape[0])

    @property
    def num_items(self) -> int:
        """Rows of the item table (the retrievable catalog)."""
        return int(self.item_embeddings.shape[0])

    @property
    def dim(self) -> int:
        """Embedding width, bias coordinate included."""
        return int(self.item_embeddings.shape[1])

    def logits(self, user_idx: IntArray, item_idx: IntArray) -> FloatArray:
        """Click logits for aligned (user, item) pairs, vectorised; for evaluation and OPE."""
        return _pair_logits(
            self.user_embeddings,
            self.item_embeddings,
            self.global_bias,
            np.asarray(user_idx, dtype=np.int64),
            np.asarray(item_idx, dtype=np.int64),
        )


def _pair_logits(
    user_emb: FloatArray,
    item_emb: FloatArray,
    global_bias: float,
    user_idx: IntArray,
    item_idx: IntArray,
) -> FloatArray:
    out: FloatArray = np.einsum("nd,nd->n", user_emb[user_idx], item_emb[item_idx])
    return out + np.float32(global_bias)


@dataclass(frozen=True, slots=True)
class TrainingOptions:
    """Optimiser knobs that are not (yet) part of :class:`CandidateSettings`.

    Defaults were picked on planted low-rank click logs (~20k impressions, dim 32) and checked
    on the simulator's demo logs (~200k impressions, 6% CTR): with ~10-100 impressions per id,
    L2 well below 0.01 lets ids memorise noise, and above ~0.05 collapses the factors to zero,
    leaving only the item biases.
    """

    learning_rate: float = 0.01
    batch_size: int = 1024
    l2: float = 0.02
    init_std: float = 0.05
    validation_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve via the Mann-Whitney rank statistic (ties count one half).

    Labels are thresholded at 0.5. Returns NaN when only one class is present, because the
    AUC is undefined there and a made-up 0.5 would hide a broken validation split.
    """
    y = np.asarray(labels, dtype=np.float64).ravel() >= 0.5
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # 1-based average rank of each distinct score, so tied scores share their mean rank.
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum_pos = float(avg_rank[inverse][y].sum())
    return (rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


class _BiasedMF(nn.Module):
    """``logit = <p_u, q_i> + b_i + b``; the tables are initialised from a seeded generator."""

    def __init__(
        self, num_users: int, num_items: int, factors: int, init_std: float, gen: torch.Generator
    ) -> None:
        super().__init__()
        self.user = nn.Parameter(torch.randn(num_users, factors, generator=gen) * init_std)
        self.item = nn.Parameter(torch.randn(num_items, factors, generator=gen) * init_std)
        self.item_bias = nn.Parameter(torch.zeros(num_items))
        self.global_bias = nn.Parameter(torch.zeros(()))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (
            (self.user[users] * self.item[items]).sum(dim=1)
            + self.item_bias[items]
            + self.global_bias
        )

    def l2_penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Per-example squared norms of the rows a batch touches (frequency-weighted L2)."""
        return (
            self.user[users].pow(2).sum(dim=1)
            + self.item[items].pow(2).sum(dim=1)
            + self.item_bias[items].pow(2)
        ).mean()


def _validate_logs(
    user_idx: IntArray,
    item_idx: IntArray,
    labels: FloatArray,
    num_users: int,
    num_items: int,
) -> tuple[IntArray, IntArray, FloatArray]:
    if num_users < 1 or num_items < 1:
        raise ValueError(f"num_users and num_items must be >= 1, got {num_users}, {num_items}")
    users = np.asarray(user_idx)
    items = np.asarray(item_idx)
    y = np.asarray(labels)
    for name, arr in (("user_idx", users), ("item_idx", items), ("labels", y)):
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not users.shape[0] == items.shape[0] == y.shape[0]:
        raise ValueError(
            f"user_idx, item_idx and labels must have equal lengths, got "
            f"{users.shape[0]}, {items.shape[0]}, {y.shape[0]}"
        )
    if users.shape[0] == 0:
        raise ValueError("no impressions to train on")
    for name, arr, bound in (("user_idx", users, num_users), ("item_idx", items, num_items)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
        bad = arr[(arr < 0) | (arr >= bound)]
        if bad.size:
            raise ValueError(f"{name} has {bad.size} ids outside [0, {bound}), e.g. {int(bad[0])}")
    y = y.astype(np.float32)
    if not np.isfinite(y).all():
        raise ValueError(f"labels contain {int((~np.isfinite(y)).sum())} NaN/inf values")
    if ((y < 0) | (y > 1)).any():
        raise ValueError("labels must lie in [0, 1] (1 = click, 0 = impressed, not clicked)")
    return users.astype(np.int64), items.astype(np.int64), y


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Cap torch's intra-op threads for a block, restoring the previous count after.

    The candidate models' matrices are small: a second thread gains little, and when the
    cores are shared, oversubscribed threads made training epochs 5-14x slower here.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_embeddings(
    user_idx: IntArray,
    item_idx: IntArray,
    labels: FloatArray,
    num_users: int,
    num_items: int,
    settings: CandidateSettings,
    seed: int,
    progress: bool = False,
    options: TrainingOptions | None = None,
) -> EmbeddingModel:
    """Fit a biased matrix factorisation to logged impressions with BCE and Adam.

    A random ``options.validation_fraction`` of impressions is held out to report
    ``val_loss`` and ``val_auc`` in :attr:`EmbeddingModel.metrics`. Every random draw (split,
    initialisation, batch order) comes from generators seeded with ``seed``, so two calls with
    the same inputs return identical embeddings without touching global RNG state.
    """
    opts = options or TrainingOptions()
    users, items, y = _validate_logs(user_idx, item_idx, labels, num_users, num_items)
    with torch_threads(1):
        return _fit(users, items, y, num_users, num_items, settings, seed, progress, opts)


def _fit(
    users: IntArray,
    items: IntArray,
    y: FloatArray,
    num_users: int,
    num_items: int,
    settings: CandidateSettings,
    seed: int,
    progress: bool,
    opts: TrainingOptions,
) -> EmbeddingModel:
    started = time.perf_counter()

    n = users.shape[0]
    n_val = min(round(n * opts.validation_fraction), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    t_users, t_items, t_y = (torch.from_numpy(a[train]) for a in (users, items, y))
    n_train = int(train.shape[0])

    gen = torch.Generator().manual_seed(seed)
    model = _BiasedMF(num_users, num_items, settings.dim - 1, opts.init_std, gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.learning_rate)
    batches_per_epoch = math.ceil(n_train / opts.batch_size)

    train_loss = math.nan
    with Progress(
        TextColumn("[bold]embeddings[/] epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        # stderr, so a CLI's stdout stays machine-readable while training reports progress.
        console=Console(stderr=True),
        disable=not progress,
    ) as bar:
        task = bar.add_task(
            "train", total=settings.epochs * batches_per_epoch, epoch=0, loss=math.nan
        )
        for epoch in range(settings.epochs):
            perm = torch.randperm(n_train, generator=gen)
            loss_sum, seen = 0.0, 0
            for start in range(0, n_train, opts.batch_size):
                idx = perm[start : start + opts.batch_size]
                bu, bi, by = t_users[idx], t_items[idx], t_y[idx]
                bce = nn.functional.binary_cross_entropy_with_logits(model(bu, bi), by)
                loss = bce + opts.l2 * model.l2_penalty(bu, bi)
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()
                loss_sum += float(bce.detach()) * idx.shape[0]
                seen += idx.shape[0]
                bar.update(task, advance=1, epoch=epoch + 1, loss=loss_sum / seen)
            train_loss = loss_sum / n_train

    with torch.no_grad():
        ones = torch.ones(num_users, 1)
        user_emb = torch.cat([model.user, ones], dim=1).numpy().astype(np.float32)
        item_emb = torch.cat([model.item, model.item_bias[:, None]], dim=1).numpy()
        global_bias = float(model.global_bias)

    metrics: dict[str, float] = {
        # Mean BCE over the last epoch's batches (the L2 term excluded, so it compares
        # with val_loss).
        "train_loss": train_loss,
        "num_train": float(n_train),
        "num_val": float(n_val),
        "epochs": float(settings.epochs),
    }
    if n_val:
        val_logits = _pair_logits(user_emb, item_emb, global_bias, users[val], items[val])
        metrics["val_loss"] = float(
            nn.functional.binary_cross_entropy_with_logits(
                torch.from_numpy(val_logits), torch.from_numpy(y[val])
            )
        )
        metrics["val_auc"] = roc_auc(y[val], val_logits)
    metrics["train_seconds"] = time.perf_counter() - started
    return EmbeddingModel(
        user_embeddings=np.ascontiguousarray(user_emb, dtype=np.float32),
        item_embeddings=np.ascontiguousarray(item_emb, dtype=np.float32),
        global_bias=global_bias,
        metrics=metrics,
    )
