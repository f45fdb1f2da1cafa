"""SlateQ's replay buffer, sized in transitions.

A rollout step holds one row per user, so a buffer counted in steps holds more or fewer
transitions as the number of users changes, and a minibatch drawn from a few of its steps
repeats rows when users are few. This one counts rows (user-steps): it keeps the last
``capacity`` of them whatever the batch sizes, and draws minibatch rows uniformly from all
it holds.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from recsys.policy.batch import Transition, concat_transitions

__all__ = ["TransitionReplay"]


class TransitionReplay:
    """FIFO of transitions bounded by ``capacity`` rows; uniform minibatches over the rows.

    Steps are stored as the batches they arrived in (no copy); the oldest batch is trimmed
    row by row when the buffer overflows, so it always holds exactly
    ``min(capacity, rows added)`` rows.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1 transition, got {capacity}")
        self.capacity = capacity
        self._steps: deque[Transition] = deque()
        self._rows = 0

    def __len__(self) -> int:
        """Transitions (rows) held."""
        return self._rows

    def add(self, transition: Transition) -> None:
        """Append a step's real rows (reset rows, ``valid`` false, are dropped)."""
        tr = transition.valid_rows()
        if tr.batch_size == 0:
            return
        if tr.batch_size > self.capacity:
            tr = tr.take(np.arange(tr.batch_size - self.capacity, tr.batch_size))
        self._steps.append(tr)
        self._rows += tr.batch_size
        while self._rows > self.capacity:
            oldest = self._steps[0]
            excess = self._rows - self.capacity
            if oldest.batch_size <= excess:
                self._steps.popleft()
                self._rows -= oldest.batch_size
            else:
                self._steps[0] = oldest.take(np.arange(excess, oldest.batch_size))
                self._rows -= excess

    def sample(self, rows: int, rng: np.random.Generator) -> Transition:
        """``rows`` transitions drawn uniformly with replacement from every row held."""
        if self._rows == 0:
            raise ValueError("cannot sample an empty replay")
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        sizes = np.fromiter((tr.batch_size for tr in self._steps), np.int64, len(self._steps))
        ends = np.cumsum(sizes)
        picks = np.sort(rng.integers(0, self._rows, rows))
        step = np.searchsorted(ends, picks, side="right")
        starts = ends - sizes
        parts = [self._steps[int(s)].take(picks[step == s] - starts[s]) for s in np.unique(step)]
        return concat_transitions(parts)
