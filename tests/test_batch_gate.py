"""BatchGate on its own (asyncio, no Serve): who gets into the batch being formed, and when. The Serve-level effect
is tests/test_service_batching.py::test_requests_arriving_during_a_batch_share_the_next_one."""

from __future__ import annotations

import asyncio

from deployments.batch_gate import BatchGate


def _run(coro):
    return asyncio.run(coro)


async def _enter_all(gate: BatchGate, n: int, order: list[int]) -> list[asyncio.Task]:
    async def one(i: int) -> None:
        await gate.enter()
        order.append(i)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    for _ in range(5):  # let every task reach the gate
        await asyncio.sleep(0)
    return tasks


def test_idle_gate_admits_one_batch_then_holds_the_rest_until_the_batch_ends():
    async def go():
        cap = [3]
        gate, order = BatchGate(lambda: cap[0]), []
        tasks = await _enter_all(gate, 5, order)
        assert order == [0, 1, 2] and gate.waiting == 2  # one batch's worth while idle
        gate.batch_started()
        more = await _enter_all(gate, 2, [])
        assert gate.waiting == 4  # nobody enters while the batch runs
        cap[0] = 2  # live max_batch_size change
        gate.batch_finished()
        await asyncio.sleep(0)
        assert order == [0, 1, 2, 3, 4] and gate.waiting == 2  # arrival order, at most the new capacity
        gate.batch_started()
        gate.batch_finished()
        await asyncio.gather(*tasks, *more)

    _run(go())


def test_cancelled_requests_do_not_take_a_place():
    async def go():
        gate, order = BatchGate(lambda: 2), []
        gate.batch_started()
        tasks = await _enter_all(gate, 4, order)
        tasks[0].cancel()  # client went away while waiting
        await asyncio.sleep(0)
        gate.batch_finished()
        tasks[1].cancel()  # admitted, then cancelled before it joined the batch: its place goes to the next
        await asyncio.gather(*tasks, return_exceptions=True)
        assert sorted(order) == [2, 3] and gate.waiting == 0

    _run(go())
