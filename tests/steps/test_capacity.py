"""The fair line for dirty workers (capacity.py, step 03 on), tested without a server.

A live server waits MAX_WAIT (30 s) before it gives up on a client in line;
here the same code runs with give-up times of a fraction of a second.
"""

import asyncio

import pytest

from harness.server import run_in_fresh_loop

pytestmark = pytest.mark.since("03")

# Short enough to keep the tests quick, long enough that a loaded machine
# still runs every waiting task well within it.
SHORT = 0.2
# Bounds a test's own waiting, so that a broken line fails instead of hanging.
GUARD = 5.0


@pytest.fixture
def capacity(step_module):
    """The step's capacity module, imported afresh from the step's folder."""
    return step_module("capacity")


def run(coroutine):
    return run_in_fresh_loop(asyncio.wait_for(coroutine, GUARD))


def one_worker_taken(capacity, waiting: int, *, max_waiting: int | None = None, retry_after: int = 7):
    """A line of one dirty worker, taken, and `waiting` places joined behind it in order.

    Returns (line, the running place, the waiting places); the line has room
    for `max_waiting` waiting places (`waiting` unless told otherwise).
    """
    room = waiting if max_waiting is None else max_waiting
    line = capacity.Capacity(workers=1, max_waiting=room, retry_after=retry_after)
    return line, line.join(), [line.join() for _ in range(waiting)]


async def until(condition) -> None:
    """Let other tasks run until `condition()` holds (GUARD bounds the wait)."""
    while not condition():
        await asyncio.sleep(0)


def test_free_workers_are_taken_first(step, capacity):
    line = capacity.Capacity(workers=2, max_waiting=3, retry_after=7)
    first, second = line.join(), line.join()
    assert first.running and second.running
    assert first.position == second.position == 0
    assert line.free == 0 and not line.line


def test_the_line_numbers_its_places_in_arrival_order(step, capacity):
    line = capacity.Capacity(workers=1, max_waiting=3, retry_after=7)
    line.join()
    waiting = [line.join() for _ in range(3)]
    assert [place.position for place in waiting] == [1, 2, 3]
    assert not any(place.running for place in waiting)


def test_a_full_line_refuses_with_retry_after(step, capacity):
    line = capacity.Capacity(workers=1, max_waiting=2, retry_after=7)
    places = [line.join() for _ in range(3)]
    with pytest.raises(capacity.Busy) as refused:
        line.join()
    assert refused.value.retry_after == 7
    assert "line is full" in str(refused.value)
    # Refusing changed nothing for those already in.
    assert [place.position for place in places] == [0, 1, 2]
    # One leaves the line: there is room for one more, and only one.
    places[2].leave()
    line.join()
    with pytest.raises(capacity.Busy):
        line.join()


def test_no_line_at_all(step, capacity):
    line = capacity.Capacity(workers=1, max_waiting=0, retry_after=3)
    line.join()
    with pytest.raises(capacity.Busy):
        line.join()


def test_a_freed_worker_goes_to_the_head_of_the_line(step, capacity):
    line = capacity.Capacity(workers=1, max_waiting=3, retry_after=7)
    running = line.join()
    first, second, third = (line.join() for _ in range(3))
    running.leave()
    assert first.running and first.moved.is_set()
    assert [second.position, third.position] == [1, 2]
    # Everyone still in line hears that they moved up.
    assert second.moved.is_set() and third.moved.is_set()
    assert line.free == 0


def test_leaving_the_line_moves_those_behind_up(step, capacity):
    line = capacity.Capacity(workers=1, max_waiting=3, retry_after=7)
    running = line.join()
    first, second, third = (line.join() for _ in range(3))
    second.leave()
    assert [first.position, third.position] == [1, 2]
    assert third.moved.is_set()
    # The worker then goes to the head, never to the place that left.
    running.leave()
    assert first.running and not second.running
    first.leave()
    assert third.running


def test_leaving_twice_frees_one_worker_only(step, capacity):
    line = capacity.Capacity(workers=2, max_waiting=2, retry_after=7)
    place = line.join()
    place.leave()
    place.leave()
    assert line.free == 2
    waiting_then_gone = capacity.Capacity(workers=1, max_waiting=2, retry_after=7)
    waiting_then_gone.join()
    queued = waiting_then_gone.join()
    queued.leave()
    queued.leave()
    assert waiting_then_gone.free == 0 and not waiting_then_gone.line


def test_workers_are_never_lost_or_invented(step, capacity):
    """However places come and go, running + free stays the number of workers."""
    workers = 3
    line = capacity.Capacity(workers=workers, max_waiting=5, retry_after=7)
    places = []
    # A fixed, varied sequence of joins and leaves (running or waiting ones).
    for step_number in range(60):
        if step_number % 3 != 2:
            try:
                places.append(line.join())
            except capacity.Busy:
                pass
        elif places:
            places.pop((step_number * 7) % len(places)).leave()
        running = sum(place.running for place in places)
        assert running + line.free == workers
        assert running == workers or not line.line
        assert [place.position for place in line.line] == list(range(1, len(line.line) + 1))
    for place in places:
        place.leave()
    assert line.free == workers and not line.line


def test_turn_yields_each_position_down_to_the_front(step, capacity):
    async def scenario():
        _line, running, (ahead, place) = one_worker_taken(capacity, 2, max_waiting=3)
        seen = []

        async def wait():
            async for position in place.turn(update_every=GUARD, give_up_after=GUARD):
                seen.append(position)

        task = asyncio.create_task(wait())
        await until(lambda: seen == [2])
        running.leave()  # `ahead` gets the worker, `place` moves to 1
        await until(lambda: len(seen) == 2)
        ahead.leave()  # `place` gets the worker
        await task
        return seen, place

    seen, place = run(scenario())
    assert seen == [2, 1]
    assert place.running and place.position == 0


def test_turn_of_a_running_place_yields_nothing(step, capacity):
    async def scenario():
        line = capacity.Capacity(workers=1, max_waiting=1, retry_after=7)
        place = line.join()
        return [position async for position in place.turn(update_every=SHORT, give_up_after=SHORT)]

    assert run(scenario()) == []


def test_turn_repeats_the_position_while_nothing_moves(step, capacity):
    async def scenario():
        _line, running, (place,) = one_worker_taken(capacity, 1)
        seen = []

        async def wait():
            async for position in place.turn(update_every=SHORT / 10, give_up_after=GUARD):
                seen.append(position)

        task = asyncio.create_task(wait())
        # Let a few updates go by, then free the worker.
        while len(seen) < 3:
            await asyncio.sleep(SHORT / 10)
        running.leave()
        await task
        return seen

    seen = run(scenario())
    assert len(seen) >= 3 and set(seen) == {1}


def test_turn_gives_up_with_busy(step, capacity):
    async def scenario():
        line, running, (place, behind) = one_worker_taken(capacity, 2, retry_after=9)
        loop = asyncio.get_running_loop()
        started = loop.time()
        seen = []
        with pytest.raises(capacity.Busy) as gave_up:
            async for position in place.turn(update_every=SHORT / 4, give_up_after=SHORT):
                seen.append(position)
        waited = loop.time() - started
        return gave_up.value, waited, seen, line, running, place, behind

    busy, waited, seen, line, running, place, behind = run(scenario())
    assert busy.retry_after == 9
    assert "waited" in str(busy)
    # It waited its time (the clock is the loop's own, so this is exact)...
    assert waited >= SHORT
    # ...hearing where it stood meanwhile.
    assert seen and set(seen) == {1}
    # The request then leaves the line (main.py does so in a finally), and the
    # one behind moves up: giving up costs nobody else their place.
    place.leave()
    assert behind.position == 1
    running.leave()
    assert behind.running and line.free == 0


def test_wait_turn_returns_when_a_worker_is_free(step, capacity):
    async def scenario():
        _line, running, (place,) = one_worker_taken(capacity, 1)
        task = asyncio.create_task(place.wait_turn(give_up_after=GUARD))
        await asyncio.sleep(0)
        assert not task.done()
        running.leave()
        await task
        return place

    assert run(scenario()).running


def test_wait_turn_gives_up_with_busy(step, capacity):
    async def scenario():
        _line, _running, (place,) = one_worker_taken(capacity, 1, retry_after=4)
        with pytest.raises(capacity.Busy) as gave_up:
            await place.wait_turn(give_up_after=SHORT)
        return gave_up.value

    assert run(scenario()).retry_after == 4


def test_a_cancelled_waiter_leaves_cleanly(step, capacity):
    """A client that hangs up while in line: its task is cancelled, and the
    dependency in main.py calls leave() on the way out."""

    async def scenario():
        line, running, (place, behind) = one_worker_taken(capacity, 2)

        seen = []

        async def wait():
            try:
                async for position in place.turn(update_every=GUARD, give_up_after=GUARD):
                    seen.append(position)
            finally:
                place.leave()

        task = asyncio.create_task(wait())
        await until(lambda: seen == [1])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert behind.position == 1
        running.leave()
        return line, place, behind

    line, place, behind = run(scenario())
    assert behind.running and not place.running
    assert line.free == 0 and not line.line


@pytest.mark.parametrize("workers", [1, 2])
def test_first_come_first_served(step, capacity, workers):
    """Many waiters, workers freed one at a time: they start in arrival order."""

    async def scenario():
        line = capacity.Capacity(workers=workers, max_waiting=8, retry_after=7)
        holders = [line.join() for _ in range(workers)]
        started: list[int] = []

        async def client(number):
            place = line.join()
            async for _position in place.turn(update_every=GUARD, give_up_after=GUARD):
                pass
            started.append(number)
            # Hold the worker until the test says so.
            holders.append(place)

        tasks = [asyncio.create_task(client(number)) for number in range(8)]
        await until(lambda: len(line.line) == 8)
        while len(started) < 8:
            count = len(started)
            holders.pop(0).leave()
            # Let the woken client run before the next worker is freed.
            await until(lambda count=count: len(started) > count)
        await asyncio.gather(*tasks)
        return started

    assert run(scenario()) == list(range(8))


def test_a_worker_freed_while_the_position_is_told_is_not_lost(step, capacity):
    """The SSE response sends each position while turn() is paused at its yield;
    whatever happens meanwhile must still wake the wait that follows."""

    async def scenario():
        _line, running, (place,) = one_worker_taken(capacity, 1)
        positions = place.turn(update_every=GUARD, give_up_after=GUARD)
        assert await positions.__anext__() == 1
        # The client is hearing "1" right now, and the worker comes free.
        running.leave()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(positions.__anext__(), SHORT)
        return place

    assert run(scenario()).running


def test_a_move_up_while_the_position_is_told_is_not_lost(step, capacity):
    async def scenario():
        _line, _running, (ahead, place) = one_worker_taken(capacity, 2)
        positions = place.turn(update_every=GUARD, give_up_after=GUARD)
        assert await positions.__anext__() == 2
        ahead.leave()
        return await asyncio.wait_for(positions.__anext__(), SHORT)

    assert run(scenario()) == 1


# The line follows the dirty workers there are (main.py resizes it from /ready's counts).


def test_a_wider_line_starts_those_waiting_in_order(step, capacity):
    line = capacity.Capacity(workers=1, max_waiting=4, retry_after=7)
    line.join()
    first, second, third = (line.join() for _ in range(3))
    line.resize(workers=3, max_waiting=12, loading=False)
    assert first.running and second.running and not third.running
    assert first.moved.is_set() and second.moved.is_set()
    # The one still waiting hears that it moved up.
    assert third.position == 1 and third.moved.is_set()


def test_a_narrower_line_lets_the_running_finish_and_starts_nobody_meanwhile(step, capacity):
    line = capacity.Capacity(workers=2, max_waiting=4, retry_after=7)
    first, second = line.join(), line.join()
    line.resize(workers=1, max_waiting=4, loading=False)
    # Nobody is stopped: the answers already running go on.
    assert first.running and second.running
    waiting = line.join()
    assert not waiting.running
    first.leave()
    assert not waiting.running, "a place started while more ran than there are workers"
    second.leave()
    assert waiting.running


def test_a_shorter_line_keeps_those_in_it_and_refuses_newcomers(step, capacity):
    line = capacity.Capacity(workers=1, max_waiting=3, retry_after=7)
    line.join()
    waiting = [line.join() for _ in range(3)]
    line.resize(workers=1, max_waiting=1, loading=False)
    assert [place.position for place in waiting] == [1, 2, 3]
    with pytest.raises(capacity.Busy):
        line.join()


def test_nobody_starts_while_a_worker_loads(step, capacity):
    line = capacity.Capacity(workers=2, max_waiting=4, retry_after=7)
    running = line.join()
    line.resize(workers=2, max_waiting=4, loading=True)
    # A worker is free, but the arbiter might hand the request to the one loading.
    place = line.join()
    assert not place.running and place.position == 1
    assert running.running, "a running answer was stopped by a worker loading"
    line.resize(workers=2, max_waiting=4, loading=False)
    assert place.running and place.moved.is_set()


def woken_by_a_look(capacity, loading: bool) -> bool:
    """One place waits behind the one worker; main.py looks again, the same size: was the place woken?"""
    line, _running, (place,) = one_worker_taken(capacity, 1, max_waiting=2)
    place.moved.clear()
    line.resize(workers=1, max_waiting=2, loading=loading)
    return place.moved.is_set()


def test_a_worker_that_starts_loading_tells_those_waiting(step, capacity):
    assert woken_by_a_look(capacity, loading=True), "those in line did not hear that the line is held"


def test_the_same_size_again_wakes_nobody(step, capacity):
    assert not woken_by_a_look(capacity, loading=False), "an unchanged look woke those in line"


def test_giving_up_while_a_worker_loads_says_so(step, capacity):
    async def scenario():
        line = capacity.Capacity(workers=1, max_waiting=1, retry_after=7)
        line.resize(workers=1, max_waiting=1, loading=True)
        place = line.join()
        with pytest.raises(capacity.Busy) as gave_up:
            await place.wait_turn(give_up_after=SHORT)
        return gave_up.value

    assert "loads" in str(run(scenario()))
