"""MicroBatcher: concurrent calls meet in batches of at most ``max_batch_size``, each caller
gets its own result, a failing batch fails only its callers, and nothing hangs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from recsys.serving.batching import MicroBatcher


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on

    def __call__(self, queries: Sequence[int]) -> list[int]:
        self.batches.append(list(queries))
        if self.fail_on is not None and self.fail_on in queries:
            raise RuntimeError(f"bad query {self.fail_on}")
        return [q * 10 for q in queries]


@pytest.mark.parametrize("offload", [False, True])
def test_concurrent_calls_are_batched_and_answered_in_order(offload: bool) -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=8, max_wait_s=0.01, offload=offload)

    async def main() -> list[int]:
        return await asyncio.gather(*(batcher(i) for i in range(20)))

    assert asyncio.run(main()) == [i * 10 for i in range(20)]
    assert all(len(b) <= 8 for b in fn.batches)
    assert sorted(q for b in fn.batches for q in b) == list(range(20))
    assert len(fn.batches) == 3  # 8 + 8 + 4: full batches go without waiting


def test_a_lone_call_waits_at_most_the_window() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=16, max_wait_s=0.005)

    async def main() -> int:
        return await asyncio.wait_for(batcher(3), timeout=2.0)

    assert asyncio.run(main()) == 30
    assert fn.batches == [[3]]


def test_a_failing_batch_fails_only_its_own_callers() -> None:
    fn = Recorder(fail_on=2)
    batcher = MicroBatcher(fn, max_batch_size=4, max_wait_s=0.01)

    async def main() -> list[object]:
        return await asyncio.gather(*(batcher(i) for i in range(8)), return_exceptions=True)

    out = asyncio.run(main())
    failed = [i for i, r in enumerate(out) if isinstance(r, RuntimeError)]
    assert failed == [0, 1, 2, 3]  # the batch holding query 2
    assert out[4:] == [40, 50, 60, 70]


def test_a_wrong_number_of_results_is_an_error_not_a_hang() -> None:
    batcher = MicroBatcher(lambda qs: [1], max_batch_size=4, max_wait_s=0.01)

    async def main() -> list[object]:
        return await asyncio.wait_for(
            asyncio.gather(batcher(1), batcher(2), return_exceptions=True), timeout=2.0
        )

    out = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in out)


def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=4, max_wait_s=0.05)

    async def main() -> list[object]:
        doomed = asyncio.ensure_future(batcher(1))
        keep = asyncio.ensure_future(batcher(2))
        await asyncio.sleep(0)
        doomed.cancel()
        return [await keep, doomed.cancelled()]

    assert asyncio.run(main()) == [20, True]


@pytest.mark.parametrize(("size", "wait"), [(0, 0.01), (4, -1.0)])
def test_settings_are_checked(size: int, wait: float) -> None:
    with pytest.raises(ValueError, match="max_"):
        MicroBatcher(Recorder(), max_batch_size=size, max_wait_s=wait)


def test_one_batcher_serves_successive_event_loops() -> None:
    """A batcher outlives the loop that first used it (a test client runs each request on a
    fresh loop; a server may restart its loop): the next loop's calls are answered, not left
    waiting on an event bound to the old loop."""
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=4, max_wait_s=0.001)

    async def main(base: int) -> list[int]:
        return await asyncio.wait_for(asyncio.gather(*(batcher(base + i) for i in range(3))), 5.0)

    assert asyncio.run(main(0)) == [0, 10, 20]
    assert asyncio.run(main(100)) == [1000, 1010, 1020]
