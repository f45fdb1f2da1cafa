"""A logit user choice model with a no-click option, learned from logged slates.

SlateQ (Ie et al. 2019) decomposes a slate's value into item values weighted by the user's
choice probabilities, ``Q(s, A) = sum_{i in A} P(i | s, A) Qbar(s, i)``, so it needs
``P(i | s, A)``. Every item has a utility ``v_i = f(user, item) + pos[slot(i)]`` and the
no-click option ``v_0 = c + a^T user`` (Ie et al. eq. 3; the simulator's default response
model has the same form). ``f`` is a :class:`~recsys.policy._nets.PairScorer` (bilinear +
optional MLP). The position term absorbs examination bias in the logs (``pos[0] = 0`` fixes
the scale against ``v_0``); SlateQ's slate optimisation assumes position-independent choice
(the paper's assumption), so it uses the slot-0 utilities :meth:`item_logits`.

Two response models share those parameters (``clicks``):

- ``"single"`` (the default, the paper's): at most one click per slate, a conditional
  (multinomial) logit over the slate and no-click,

      P(i | s, A) = exp(v_i) / (exp(v_0) + sum_{j in A} exp(v_j)),

  fit on the first click of each row (:meth:`recsys.policy.batch.SlateResponse.choice`).
  Items compete: a more attractive neighbour takes clicks away.
- ``"multi"``: any number of clicks; each slotted item is clicked independently, by the same
  logit restricted to the item and no-click,

      P(click i | s, A) = exp(v_i) / (exp(v_0) + exp(v_i)) = sigmoid(v_i - v_0),

  fit by the per-slot binary likelihood of the whole click mask
  (:meth:`~recsys.policy.batch.SlateResponse.clicks`). Items do not compete, so a user who
  clicks several items of one slate is not forced into a distribution that sums to one (the
  single model fit on such logs sees only first clicks and reads the clicks it misses as a
  steep position bias).

Both expose the marginal click probability of each slot (:meth:`click_probabilities`), which
is all SlateQ's decomposition needs (see :mod:`recsys.policy.algorithms.slateq`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from recsys.policy._nets import PairScorer, gather_candidates, seeded, to_numpy, to_tensor
from recsys.policy.batch import Transition
from recsys.types import FloatArray

#: How many clicks a slate can get: at most one (``"single"``) or any number (``"multi"``).
ClickModel = Literal["single", "multi"]
CLICK_MODELS: tuple[ClickModel, ...] = ("single", "multi")


class ConditionalLogitChoiceModel(nn.Module):
    """``P(click slot s | user, slate)`` for slots ``0..S-1`` and "no click" (index ``S``).

    ``clicks`` picks the response model (see the module docstring); the parameters, and so
    the ``state_dict`` keys, are the same for both.
    """

    def __init__(
        self,
        user_dim: int,
        item_dim: int,
        max_slate_size: int,
        hidden: Sequence[int] = (),
        seed: int = 0,
        clicks: ClickModel = "single",
    ) -> None:
        super().__init__()
        if max_slate_size < 1:
            raise ValueError(f"max_slate_size must be >= 1, got {max_slate_size}")
        if clicks not in CLICK_MODELS:
            raise ValueError(f"clicks must be single or multi, got {clicks!r}")
        self.max_slate_size = int(max_slate_size)
        self.clicks: ClickModel = clicks
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
        """``[B, S + 1]``: per-slot click probabilities, then the probability of no click.

        ``"single"``: the choice distribution (rows sum to 1). ``"multi"``: the slots'
        marginal click probabilities (:meth:`click_probabilities`) and
        ``prod_s (1 - P(click s))``; rows sum to the expected number of clicks plus the
        no-click probability, not to 1.
        """
        if self.clicks == "single":
            return torch.softmax(self.slate_logits(user, slate_items), dim=1)
        p = self.click_probabilities(user, slate_items)
        return torch.cat([p, torch.prod(1.0 - p, dim=1, keepdim=True)], dim=1)

    def click_probabilities(self, user: torch.Tensor, slate_items: torch.Tensor) -> torch.Tensor:
        """Marginal ``P(slot s clicked | s, A)`` ``[B, S]`` (positions included).

        ``"single"``: the choice probabilities of the slots (they and no-click sum to 1);
        ``"multi"``: ``sigmoid(v_s + pos[s] - v_0)``, each slot on its own.
        """
        logits = self.slate_logits(user, slate_items)
        if self.clicks == "single":
            return torch.softmax(logits, dim=1)[:, :-1]
        return torch.sigmoid(logits[:, :-1] - logits[:, -1:])

    def item_click_probabilities(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``"multi"`` only: position-free (slot-0) ``P(click i | s)`` ``[B, C]`` of every
        candidate, the same whatever else the slate holds (what slate optimisation uses).

        A single-click probability depends on the rest of the slate; use
        :meth:`item_logits` and :meth:`no_click_logit` (attractions) for that model.
        """
        if self.clicks != "multi":
            raise ValueError("item_click_probabilities needs clicks='multi'")
        return torch.sigmoid(self.item_logits(user, items) - self.no_click_logit(user)[:, None])

    def nll(
        self, user: torch.Tensor, slate_items: torch.Tensor, choice: torch.Tensor
    ) -> torch.Tensor:
        """Mean negative log-likelihood per row of observed responses.

        ``choice`` is ``[B]`` chosen slots (``S`` = no click) or ``[B, S]`` click masks; either
        fits either model (:meth:`responses`). ``"single"``: the log-probability of the
        (first) choice. ``"multi"``: the sum over the row's slots of the binary
        log-likelihoods of clicked / not clicked.
        """
        logits = self.slate_logits(user, slate_items)
        target = self.responses(choice, slate_items.shape[1])
        if self.clicks == "single":
            logp = torch.log_softmax(logits, dim=1)
            return -logp.gather(1, target[:, None]).mean()
        per_slot = nn.functional.binary_cross_entropy_with_logits(
            logits[:, :-1] - logits[:, -1:], target, reduction="none"
        )
        return per_slot.sum(dim=1).mean()

    def responses(self, choice: torch.Tensor, slate_size: int) -> torch.Tensor:
        """The training target of this model from ``[B]`` choices or ``[B, S]`` click masks.

        ``"single"``: ``[B]`` int64 choices; a mask keeps its first click (``S`` when none),
        the convention of :meth:`~recsys.policy.batch.SlateResponse.choice`. ``"multi"``:
        ``[B, S]`` float32 masks; a choice becomes a one-hot row (no click: all zeros), a
        single-click log being a valid multi-click log.
        """
        if choice.dim() == 2:
            if choice.shape[1] != slate_size:
                raise ValueError(
                    f"click mask of {choice.shape[1]} slots for a slate of {slate_size}"
                )
            clicked = choice > 0
            if self.clicks == "multi":
                return clicked.to(torch.float32)
            first = torch.argmax(clicked.to(torch.int64), dim=1)
            return torch.where(clicked.any(dim=1), first, torch.full_like(first, slate_size))
        target = choice.to(torch.int64)
        if self.clicks == "single":
            return target
        return nn.functional.one_hot(target, slate_size + 1)[:, :slate_size].to(torch.float32)

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
        """Maximum likelihood on logged slates: ``[N, du]``, ``[N, S, di]`` and responses.

        ``choice`` is ``[N]``, the clicked slot or ``S`` for no click
        (:meth:`recsys.policy.batch.SlateResponse.choice`), or ``[N, S]`` click masks
        (:meth:`~recsys.policy.batch.SlateResponse.clicks`); see :meth:`responses` for how
        each model reads each. Returns the final mean NLL.
        """
        u, x = to_tensor(user_features), to_tensor(slate_item_features)
        raw = np.asarray(choice)
        n, s = u.shape[0], x.shape[1]
        if x.shape[0] != n or raw.shape[0] != n:
            raise ValueError("user_features, slate_item_features and choice disagree on N")
        if n == 0 or epochs < 1 or batch_size < 1:
            raise ValueError("need at least one row, one epoch and batch_size >= 1")
        if raw.ndim == 2:
            if raw.shape[1] != s or not np.isin(raw, (0, 1)).all():
                raise ValueError(f"a choice mask must be [N, {s}] of 0/1, got {raw.shape}")
            y = to_tensor(raw, torch.float32)
        else:
            y = to_tensor(raw, torch.int64).reshape(-1)
            if int(y.min()) < 0 or int(y.max()) > s:
                raise ValueError(f"choice must lie in [0, {s}] ({s} = no click)")
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
    """``(user [B, du], slate item features [B, S, di], choice [B])`` from a transition
    (the first click only; :func:`click_data` keeps them all)."""
    items = to_tensor(transition.obs.item_features)
    slates = to_tensor(transition.action.slates, torch.int64)
    return (
        to_tensor(transition.obs.user_features),
        gather_candidates(items, slates),
        to_tensor(np.asarray(transition.response.choice()), torch.int64),
    )


def click_data(transition: Transition) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(user [B, du], slate item features [B, S, di], click mask [B, S])`` from a
    transition: every click, for the ``"multi"`` model."""
    user, slate_items, _ = choice_data(transition)
    return user, slate_items, to_tensor(transition.response.clicks(), torch.float32)
