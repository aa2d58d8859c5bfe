"""Read planning, the circuit breaker and the priority lock (no I/O)."""

from __future__ import annotations

import asyncio

import pytest

from meter_gateway.protocols.modbus.breaker import BreakerState, CircuitBreaker
from meter_gateway.protocols.modbus.lock import PriorityLock
from meter_gateway.protocols.modbus.plan import plan_reads
from meter_gateway.protocols.modbus.registermap import RegisterEntry, bundled_map


def e(field: str, address: int, type_: str = "float32", function: int = 4) -> RegisterEntry:
    return RegisterEntry(field=field, address=address, type=type_, function=function)


def spans(reads: list) -> list[tuple[int, int, int]]:
    return [(r.function, r.address, r.count) for r in reads]


def test_contiguous_entries_merge() -> None:
    entries = [e("voltage_l1_v", 0), e("voltage_l2_v", 2), e("voltage_l3_v", 4)]
    assert spans(plan_reads(entries, max_registers=125, max_gap=0)) == [(4, 0, 6)]


def test_gap_bridged_only_up_to_max_gap() -> None:
    entries = [e("voltage_l1_v", 0), e("power_w", 12)]  # 10 unused registers between
    assert spans(plan_reads(entries, max_registers=125, max_gap=10)) == [(4, 0, 14)]
    assert spans(plan_reads(entries, max_registers=125, max_gap=9)) == [(4, 0, 2), (4, 12, 2)]


def test_split_at_the_device_maximum() -> None:
    entries = [e(f, 2 * i) for i, f in enumerate(["voltage_l1_v", "voltage_l2_v", "voltage_l3_v"])]
    assert spans(plan_reads(entries, max_registers=4, max_gap=0)) == [(4, 0, 4), (4, 4, 2)]


def test_function_codes_are_never_merged() -> None:
    entries = [e("voltage_l1_v", 0, function=3), e("power_w", 2, function=4)]
    assert spans(plan_reads(entries, max_registers=125, max_gap=10)) == [(3, 0, 2), (4, 2, 2)]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("sdm630", [(4, 0x0000, 76)]),
        ("sdm120", [(4, 0x0000, 32), (4, 0x0046, 6)]),
        ("em24", [(3, 0x0000, 18), (3, 0x0028, 14), (3, 0x004E, 2)]),
        ("iem3155", [(3, 2999, 112), (3, 45099, 4)]),
    ],
)
def test_bundled_map_plans(model: str, expected: list[tuple[int, int, int]]) -> None:
    m = bundled_map(model)
    reads = plan_reads(m.registers, max_registers=m.max_registers_per_request, max_gap=m.max_gap)
    assert spans(reads) == expected
    assert sum(len(r.entries) for r in reads) == len(m.registers)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_backs_off_doubles_and_closes() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=2, backoff_s=10, max_backoff_s=25, clock=clock, jitter=0)
    assert b.allow()
    b.record_failure()
    assert b.state is BreakerState.CLOSED
    assert not b.healthy  # no retries, back of the queue
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    clock.now += 10
    assert b.allow()
    assert b.state is BreakerState.HALF_OPEN
    b.record_failure()  # probe failed: wait twice as long
    assert (b.state, b.backoff_s) == (BreakerState.OPEN, 20)
    clock.now += 20
    assert b.allow()
    b.record_failure()
    assert b.backoff_s == 25  # capped
    clock.now += 25
    assert b.allow()
    b.record_success()
    assert b.state is BreakerState.CLOSED
    assert b.healthy


async def test_priority_lock_serves_healthy_first_then_fifo() -> None:
    lock = PriorityLock()
    order: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with lock.hold(0):
            await release.wait()

    async def waiter(name: str, priority: int) -> None:
        async with lock.hold(priority):
            order.append(name)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    assert lock.locked
    tasks = [
        asyncio.create_task(waiter("dead-1", 1)),
        asyncio.create_task(waiter("live-1", 0)),
        asyncio.create_task(waiter("dead-2", 1)),
        asyncio.create_task(waiter("live-2", 0)),
    ]
    cancelled = asyncio.create_task(waiter("gone", 0))
    await asyncio.sleep(0)
    cancelled.cancel()
    release.set()
    await asyncio.gather(first, *tasks)
    assert order == ["live-1", "live-2", "dead-1", "dead-2"]
    assert not lock.locked


def test_breaker_backoff_is_jittered_within_bounds() -> None:
    waits = set()
    for _ in range(20):
        clock = Clock()
        b = CircuitBreaker(failures=1, backoff_s=10, max_backoff_s=10, clock=clock, jitter=0.2)
        b.record_failure()
        assert b.backoff_s == 10
        waits.add(round(b.retry_in(), 6))
        assert 8 <= b.retry_in() <= 12
    assert len(waits) > 1
