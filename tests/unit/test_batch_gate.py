"""BatchGate on its own (asyncio, no Serve): who may join the batch being formed, of which shape, and when. The
Serve-level effect is tests/service/test_service_batching.py."""

from __future__ import annotations

import asyncio

from deployments.batching.gate import BatchGate


class Requests:
    """Requests that enter the gate and hold their place until `answer()` (their batch returned)."""

    def __init__(self, gate: BatchGate):
        self.gate, self.joined, self.tasks, self._answers, self.places = gate, [], {}, {}, {}

    async def send(self, *names: str, key: str = "1024x1024") -> None:
        for name in names:
            self._answers[name] = asyncio.Event()
            self.tasks[name] = asyncio.create_task(self._one(name, key))
        for _ in range(5):  # let them reach the gate
            await asyncio.sleep(0)

    async def _one(self, name: str, key: str) -> None:
        async with self.gate.slot(key) as place:
            self.joined.append(name)
            self.places[name] = place
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
        r = Requests(BatchGate(lambda key, queued: cap[0], lambda: 10.0))
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
        r = Requests(BatchGate(lambda key, queued: 8, lambda: 0.05))
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
        r = Requests(BatchGate(lambda key, queued: 2, lambda: 10.0))
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
        r = Requests(BatchGate(lambda key, queued: 4, lambda: 0.0))
        await r.send("a")
        await r.send("b", "c", "d", "e", "f")
        assert r.joined == ["a"]
        await r.answer("a")
        assert r.joined == ["a", "b", "c", "d", "e"] and r.gate.waiting == 1
        await r.answer("b", "c", "d", "e")
        await r.answer("f")

    asyncio.run(go())


def test_each_batch_holds_one_shape_and_the_oldest_shape_goes_first():
    """Mixed sizes: the spell admits one key's requests (FIFO) up to the planned batch; the next spell is the key whose
    oldest request has waited longest, so a rare shape is never starved by a busy one."""

    async def go():
        planned = []

        def plan(key, queued):
            planned.append((key, queued))
            return 8

        r = Requests(BatchGate(plan, lambda: 10.0))
        await r.send("a1", key="a")
        await r.send("b1", key="b")  # waits: the spell is a's
        await r.send("a2", "a3", key="a")  # join a's spell while it is open
        await r.send("c1", key="c")
        await r.send("b2", "b3", key="b")
        await r.send("a4", key="a")  # a's queue is behind b's and c's heads now... and a's spell still runs
        assert r.joined == ["a1", "a2", "a3", "a4"] and r.gate.waiting_by_key() == {"b": 3, "c": 1}
        await r.answer("a1", "a2", "a3", "a4")
        assert r.joined[4:] == ["b1", "b2", "b3"] and planned[-1] == ("b", 3)  # b1 is the oldest head
        await r.answer("b1", "b2", "b3")
        assert r.joined[7:] == ["c1"]
        await r.answer("c1")
        assert r.gate.waiting == 0

    asyncio.run(go())


def test_the_plan_sets_the_batch_from_the_queue_of_its_shape():
    """The latency policy may run fewer than are waiting: the rest wait for the next spell, in order."""

    async def go():
        r = Requests(BatchGate(lambda key, queued: 1 if queued < 3 else 2, lambda: 10.0))
        await r.send("x")
        await r.send("y", "z", "w")
        assert r.joined == ["x"]  # an idle start: one waiting (itself), batch of 1, no late joiners
        await r.answer("x")
        assert r.joined == ["x", "y", "z"]  # three waiting -> 2
        await r.answer("y", "z")
        assert r.joined == ["x", "y", "z", "w"]
        await r.answer("w")

    asyncio.run(go())


def test_a_batch_whose_gpu_work_is_over_lets_the_next_one_in_before_its_answers_are_delivered():
    """The handler releases its requests' places when the pipeline call returns: the next spell is admitted while
    those answers are still on their way back (no GPU idle gap for result delivery). Release is given back once: the
    request's own exit later does not count twice."""

    async def go():
        r = Requests(BatchGate(lambda key, queued: 2, lambda: 10.0))
        await r.send("a", "b", "c", "d", "e")
        assert r.joined == ["a", "b"]
        r.places["a"].release()
        await asyncio.sleep(0)
        assert r.joined == ["a", "b"]  # b's GPU work is not over (it is in the same batch; both are released)
        r.places["b"].release()
        r.places["b"].release()  # idempotent
        for _ in range(5):
            await asyncio.sleep(0)
        assert r.joined == ["a", "b", "c", "d"]  # a and b still hold their requests open
        await r.answer("a", "b")  # their exits give nothing back twice: c and d still hold the spell
        assert r.joined == ["a", "b", "c", "d"] and r.gate.waiting == 1
        await r.answer("c", "d")
        assert r.joined[-1] == "e"
        await r.answer("e")

    asyncio.run(go())
