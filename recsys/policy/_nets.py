"""Small torch building blocks shared by the learned policies (private to the package)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from recsys.types import FloatArray

#: Logit given to invalid (padding) candidates: exp() underflows to exactly 0 in float32, yet
#: it stays finite, so no ``inf - inf = nan`` can appear in a log-softmax.
MASKED_LOGIT = -1e9


def to_tensor(x: npt.ArrayLike, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A CPU tensor view/copy of a numpy array (no autograd history)."""
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def to_numpy(x: torch.Tensor) -> FloatArray:
    """Detached float32 numpy copy."""
    out: FloatArray = x.detach().to(torch.float32).cpu().numpy()
    return out


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for parameter init without disturbing the caller's stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """``Linear -> ReLU`` per hidden width, then a linear head."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class PairScorer(nn.Module):
    """Scores every (user, candidate) pair of a batch: ``[B, du] x [B, C, di] -> [B, C]``.

    ``score = u^T W x + MLP([u, x])``: the bilinear term personalises even with no hidden layer
    (a two-tower dot product, and exact for one-hot users and items); the MLP (linear in
    ``[u, x]`` when ``hidden`` is empty) adds item and user main effects and non-linearities.
    """

    def __init__(self, user_dim: int, item_dim: int, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        self.bilinear = nn.Parameter(torch.zeros(user_dim, item_dim))
        self.mlp = mlp(user_dim + item_dim, hidden, 1)

    def forward(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        b, c, _ = items.shape
        # u^T W x for every candidate as one batched matrix product: a three-operand einsum
        # plans its contraction on every call, which cost four times the arithmetic here.
        pair = torch.bmm(items, (user @ self.bilinear).unsqueeze(-1)).squeeze(-1)
        joint = torch.cat([user[:, None, :].expand(b, c, user.shape[1]), items], dim=-1)
        out: torch.Tensor = self.mlp(joint).squeeze(-1)
        return pair + out


def masked_logits(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Replace invalid candidates' logits with :data:`MASKED_LOGIT`."""
    return torch.where(valid, logits, torch.full_like(logits, MASKED_LOGIT))


def gather_candidates(values: torch.Tensor, slates: torch.Tensor) -> torch.Tensor:
    """``values[b, slates[b, s], ...]`` for ``[B, C, ...]`` values and ``[B, S]`` slates."""
    if values.dim() == 2:
        return torch.gather(values, 1, slates)
    index = slates[..., None].expand(*slates.shape, values.shape[-1])
    return torch.gather(values, 1, index)
