"""A conditional-logit user choice model with a no-click option, learned from logged slates.

SlateQ (Ie et al. 2019) decomposes a slate's value into item values weighted by the user's
choice probabilities, ``Q(s, A) = sum_{i in A} P(i | s, A) Qbar(s, i)``, so it needs
``P(i | s, A)``. Under the conditional (multinomial) logit,

    P(i | s, A) = exp(v_i) / (exp(v_0) + sum_{j in A} exp(v_j)),

with item utility ``v_i = f(user, item) + pos[slot(i)]`` and no-click utility
``v_0 = c + a^T user`` (Ie et al. eq. 3; the simulator's default response model has the same
form). ``f`` is a :class:`~recsys.policy._nets.PairScorer` (bilinear + optional MLP). The
position term absorbs examination bias in the logs (``pos[0] = 0`` fixes the scale against
``v_0``); SlateQ's slate optimisation assumes position-independent choice (the paper's
assumption), so it uses the slot-0 utilities :meth:`item_logits`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from recsys.policy._nets import PairScorer, gather_candidates, seeded, to_numpy, to_tensor
from recsys.policy.batch import Transition
from recsys.types import FloatArray


class ConditionalLogitChoiceModel(nn.Module):
    """``P(click slot s | user, slate)`` for slots ``0..S-1`` and "no click" (index ``S``)."""

    def __init__(
        self,
        user_dim: int,
        item_dim: int,
        max_slate_size: int,
        hidden: Sequence[int] = (),
        seed: int = 0,
    ) -> None:
        super().__init__()
        if max_slate_size < 1:
            raise ValueError(f"max_slate_size must be >= 1, got {max_slate_size}")
        self.max_slate_size = int(max_slate_size)
        self.seed = seed
        with seeded(seed):
            self.utility = PairScorer(user_dim, item_dim, hidden)
            self.no_click = nn.Linear(user_dim, 1)
        nn.init.zeros_(self.no_click.weight)
        nn.init.zeros_(self.no_click.bias)
        self.position_bias = nn.Parameter(torch.zeros(self.max_slate_size - 1))

    def item_logits(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Position-free (slot-0) utilities ``v_i``: ``[B, du] x [B, C, di] -> [B, C]``."""
        out: torch.Tensor = self.utility(user, items)
        return out

    def no_click_logit(self, user: torch.Tensor) -> torch.Tensor:
        """No-click utility ``v_0`` ``[B]``."""
        out: torch.Tensor = self.no_click(user).squeeze(-1)
        return out

    def slate_logits(self, user: torch.Tensor, slate_items: torch.Tensor) -> torch.Tensor:
        """Utilities ``[B, S + 1]`` of the slotted items (position bias added) and no-click."""
        s = slate_items.shape[1]
        if s > self.max_slate_size:
            raise ValueError(f"slate of {s} exceeds max_slate_size {self.max_slate_size}")
        pos = torch.cat([torch.zeros(1), self.position_bias])[:s]
        v = self.item_logits(user, slate_items) + pos
        return torch.cat([v, self.no_click_logit(user)[:, None]], dim=1)

    def slate_probabilities(self, user: torch.Tensor, slate_items: torch.Tensor) -> torch.Tensor:
        """Choice distribution ``[B, S + 1]`` (rows sum to 1; last column = no click)."""
        return torch.softmax(self.slate_logits(user, slate_items), dim=1)

    def nll(
        self, user: torch.Tensor, slate_items: torch.Tensor, choice: torch.Tensor
    ) -> torch.Tensor:
        """Mean negative log-likelihood of observed choices (``S`` = no click)."""
        logp = torch.log_softmax(self.slate_logits(user, slate_items), dim=1)
        return -logp.gather(1, choice[:, None]).mean()

    def predict_proba(
        self, user_features: npt.ArrayLike, slate_item_features: npt.ArrayLike
    ) -> FloatArray:
        """Numpy :meth:`slate_probabilities`: ``[B, du]``, ``[B, S, di]`` → ``[B, S + 1]``."""
        with torch.no_grad():
            p = self.slate_probabilities(to_tensor(user_features), to_tensor(slate_item_features))
        return to_numpy(p)

    def fit(
        self,
        user_features: npt.ArrayLike,
        slate_item_features: npt.ArrayLike,
        choice: npt.ArrayLike,
        *,
        epochs: int = 30,
        lr: float = 0.02,
        batch_size: int = 1024,
        weight_decay: float = 0.0,
    ) -> dict[str, float]:
        """Maximum likelihood on logged slates: ``[N, du]``, ``[N, S, di]``, choices ``[N]``.

        ``choice[n]`` is the clicked slot or ``S`` for no click
        (:meth:`recsys.policy.batch.SlateResponse.choice`). Returns the final mean NLL.
        """
        u, x = to_tensor(user_features), to_tensor(slate_item_features)
        y = to_tensor(choice, torch.int64).reshape(-1)
        n = u.shape[0]
        if x.shape[0] != n or y.shape[0] != n:
            raise ValueError("user_features, slate_item_features and choice disagree on N")
        if n == 0 or epochs < 1 or batch_size < 1:
            raise ValueError("need at least one row, one epoch and batch_size >= 1")
        if int(y.min()) < 0 or int(y.max()) > x.shape[1]:
            raise ValueError(f"choice must lie in [0, {x.shape[1]}] ({x.shape[1]} = no click)")
        opt = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                rows = perm[start : start + batch_size]
                opt.zero_grad()
                loss = self.nll(u[rows], x[rows], y[rows])
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
        with torch.no_grad():
            return {"nll": float(self.nll(u, x, y))}


def choice_data(transition: Transition) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(user [B, du], slate item features [B, S, di], choice [B])`` from a transition."""
    items = to_tensor(transition.obs.item_features)
    slates = to_tensor(transition.action.slates, torch.int64)
    return (
        to_tensor(transition.obs.user_features),
        gather_candidates(items, slates),
        to_tensor(np.asarray(transition.response.choice()), torch.int64),
    )
