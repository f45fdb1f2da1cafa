"""Micro-batching of concurrent requests for a server without Ray Serve.

Inside a Serve replica ``@serve.batch`` does this job (see :mod:`recsys.serving.deployment`),
but it needs a replica context, so the same FastAPI app behind plain uvicorn (the comparison
``recsys bench serve`` makes, and unit tests) batches through :class:`MicroBatcher` instead:
the same batch size and wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Q = TypeVar("Q")
R = TypeVar("R")


class MicroBatcher(Generic[Q, R]):
    """Gathers concurrent ``await batcher(query)`` calls into calls of ``fn(queries)``.

    A batch closes when it holds ``max_batch_size`` queries or ``max_wait_s`` after the first
    one arrived, whichever is first, and only once the previous batch is done, so under load
    batches fill up instead of queueing. ``fn`` must return one result per query, in order;
    if it raises, every query of that batch gets the exception. A caller that goes away
    (cancelled) simply does not receive its result.

    By default the batch runs on the event loop itself. ``offload=True`` runs it in a worker
    thread instead, which keeps the loop free during the batch but pays a GIL hand-off on
    every switch between the two threads: on the 2-core box that about doubled a batch's
    time and the tail latency behind Ray Serve (docs/serving.md). ``fn`` must therefore not
    block for long: the serving path reads the store with a short timeout and never waits
    on the broker.
    """

    def __init__(
        self,
        fn: Callable[[Sequence[Q]], Sequence[R]],
        max_batch_size: int = 16,
        max_wait_s: float = 0.0005,
        *,
        offload: bool = False,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.offload = offload
        self._pending: list[tuple[Q, asyncio.Future[R]]] = []
        self._full = asyncio.Event()  # binds to the first loop that waits on it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None

    async def __call__(self, query: Q) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((query, future))
        if self._loop is not loop:  # an asyncio.Event serves the loop that first waits on it
            self._full, self._loop = asyncio.Event(), loop
        if len(self._pending) >= self.max_batch_size:
            self._full.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Run batches until nothing is pending; should anything escape (a cancelled loop),
        the queries still waiting get the error instead of waiting forever."""
        try:
            await self._run_batches()
        except BaseException as exc:
            pending, self._pending = self._pending, []
            for _, f in pending:
                if not f.done():
                    f.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            raise

    async def _run_batches(self) -> None:
        while self._pending:
            if len(self._pending) < self.max_batch_size and self.max_wait_s > 0:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_wait_s)
            batch = self._pending[: self.max_batch_size]
            del self._pending[: self.max_batch_size]
            live = [(q, f) for q, f in batch if not f.done()]
            if not live:
                continue
            try:
                queries = [q for q, _ in live]
                if self.offload:
                    results = await asyncio.to_thread(self._fn, queries)
                else:
                    results = self._fn(queries)
                if len(results) != len(live):
                    raise RuntimeError(
                        f"batch function returned {len(results)} results for {len(live)} queries"
                    )
            except Exception as exc:
                for _, f in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for (_, f), r in zip(live, results, strict=True):
                if not f.done():
                    f.set_result(r)
