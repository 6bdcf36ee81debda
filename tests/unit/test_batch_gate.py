"""BatchGate on its own (asyncio, no Serve): who may join the batch being formed, and when. The Serve-level effect
is tests/test_service_batching.py::test_requests_arriving_during_a_batch_share_the_next_one."""

from __future__ import annotations

import asyncio

from deployments.batching.gate import BatchGate


class Requests:
    """Requests that enter the gate and hold their place until `answer()` (their batch returned)."""

    def __init__(self, gate: BatchGate):
        self.gate, self.joined, self.tasks, self._answers = gate, [], {}, {}

    async def send(self, *names: str) -> None:
        for name in names:
            self._answers[name] = asyncio.Event()
            self.tasks[name] = asyncio.create_task(self._one(name))
        for _ in range(5):  # let them reach the gate
            await asyncio.sleep(0)

    async def _one(self, name: str) -> None:
        async with self.gate.slot():
            self.joined.append(name)
            await self._answers[name].wait()

    async def answer(self, *names: str) -> None:
        for name in names:
            self._answers[name].set()
        await asyncio.gather(*(self.tasks[n] for n in names), return_exceptions=True)
        for _ in range(5):
            await asyncio.sleep(0)


def test_one_batch_per_idle_spell_in_arrival_order_with_the_live_capacity():
    async def go():
        cap = [3]
        r = Requests(BatchGate(lambda: cap[0], lambda: 10.0))
        await r.send("a", "b", "c", "d", "e")
        assert r.joined == ["a", "b", "c"] and r.gate.waiting == 2  # one batch's worth
        await r.answer("a", "b")
        await r.send("f")
        assert r.joined == ["a", "b", "c"]  # nobody joins while any admitted request is unanswered
        cap[0] = 2  # live max_batch_size change
        await r.answer("c")
        assert r.joined == ["a", "b", "c", "d", "e"] and r.gate.waiting == 1
        await r.answer("d", "e")
        assert r.joined[-1] == "f"
        await r.answer("f")

    asyncio.run(go())


def test_the_spell_closes_after_the_batch_wait():
    """A request later than batch_wait_timeout_s after the first would miss Serve's batch and be batched alone,
    ahead of everyone who arrives during the GPU batch; it waits for the next spell instead."""

    async def go():
        r = Requests(BatchGate(lambda: 8, lambda: 0.05))
        await r.send("a")
        await asyncio.sleep(0.1)
        await r.send("late")
        assert r.joined == ["a"] and r.gate.waiting == 1
        await r.answer("a")
        assert r.joined == ["a", "late"]
        await r.answer("late")

    asyncio.run(go())


def test_cancelled_requests_give_their_place_back_and_never_wedge_the_gate():
    async def go():
        r = Requests(BatchGate(lambda: 2, lambda: 10.0))
        await r.send("a", "b", "c", "d")
        r.tasks["c"].cancel()  # client went away while waiting
        r.tasks["a"].cancel()  # ... or while its batch ran
        r.tasks["b"].cancel()
        await asyncio.gather(*(r.tasks[n] for n in "abc"), return_exceptions=True)
        for _ in range(5):
            await asyncio.sleep(0)
        assert r.joined == ["a", "b", "d"] and r.gate.waiting == 0  # "c" never joined; "d" did once a, b were gone
        await r.answer("d")
        await r.send("e")
        assert r.joined[-1] == "e"  # the gate is open again
        await r.answer("e")

    asyncio.run(go())


def test_with_no_batch_wait_everyone_already_waiting_still_joins_the_next_batch():
    """batch_wait_timeout_s 0: no company is awaited for new arrivals, but requests that waited through the last
    batch are all there when it ends (Serve would take them all from its queue)."""

    async def go():
        r = Requests(BatchGate(lambda: 4, lambda: 0.0))
        await r.send("a")
        await r.send("b", "c", "d", "e", "f")
        assert r.joined == ["a"]
        await r.answer("a")
        assert r.joined == ["a", "b", "c", "d", "e"] and r.gate.waiting == 1
        await r.answer("b", "c", "d", "e")
        await r.answer("f")

    asyncio.run(go())
