"""First come, first served access to the dirty workers.

A dirty worker serves one request at a time, so the HTTP worker keeps the
count: at most `workers` requests run at once, the next `max_waiting` wait in
line in arrival order and hear where they stand, and anyone beyond that is
told at once to come back later. main.py resizes the line to follow the
dirty workers the arbiter really keeps, and holds it while one of them is
still loading its model.

The line does not choose the worker: the arbiter hands requests to its
workers in turn, blind to how busy they are, so a request can wait behind a
long answer while another worker is idle.
"""

import asyncio
from collections import deque
from collections.abc import AsyncIterator


class Busy(Exception):
    """No model worker is free, and none will be soon enough."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Place:
    """One request's place: running, or waiting in line."""

    def __init__(self, capacity: "Capacity"):
        self.capacity = capacity
        self.running = False
        self.moved = asyncio.Event()

    @property
    def position(self) -> int:
        """0 once running, else 1 for the head of the line, 2 behind it..."""
        return 0 if self.running else self.capacity.line.index(self) + 1

    async def turn(self, update_every: float, give_up_after: float) -> AsyncIterator[int]:
        """Yield the position in line while waiting: when it changes, and every
        `update_every` seconds; return when it is this request's turn."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + give_up_after
        while not self.running:
            # Cleared before the yield: the client hears its position while
            # turn() is paused there, and a move meanwhile must still count.
            self.moved.clear()
            yield self.position
            left = deadline - loop.time()
            try:
                await asyncio.wait_for(self.moved.wait(), min(update_every, left))
            except TimeoutError:
                if loop.time() >= deadline:
                    why = "while a model worker loads" if self.capacity.loading else "for a free model worker"
                    raise Busy(f"waited {give_up_after:.0f} s {why}", self.capacity.retry_after) from None

    async def wait_turn(self, give_up_after: float) -> None:
        """Wait quietly for this request's turn, for answers that cannot stream."""
        async for _position in self.turn(give_up_after, give_up_after):
            pass

    def leave(self) -> None:
        """Give the worker back, or step out of the line."""
        self.capacity.release(self)


class Capacity:
    def __init__(self, workers: int, max_waiting: int, retry_after: int):
        self.workers = workers
        self.max_waiting = max_waiting
        self.retry_after = retry_after
        # While a dirty worker loads its model, nobody starts: the arbiter
        # would hand the next request to it as readily as to a loaded one.
        self.loading = False
        self.running = 0
        self.line: deque[Place] = deque()

    @property
    def free(self) -> int:
        """How many more requests may start now."""
        return 0 if self.loading else max(self.workers - self.running, 0)

    def join(self) -> Place:
        """Start at once if fewer than `workers` run, else take a place in line;
        raise Busy if the line is full. The arbiter picks the worker."""
        place = Place(self)
        if self.free:
            self.running += 1
            place.running = True
        elif len(self.line) < self.max_waiting:
            self.line.append(place)
        else:
            raise Busy("every model worker is busy and the line is full", self.retry_after)
        return place

    def resize(self, workers: int, max_waiting: int, loading: bool) -> None:
        """Follow the dirty workers there are now; those running keep running."""
        if (workers, max_waiting, loading) == (self.workers, self.max_waiting, self.loading):
            return
        self.workers, self.max_waiting, self.loading = workers, max_waiting, loading
        self.move_up()

    def release(self, place: Place) -> None:
        if place.running:
            place.running = False
            self.running -= 1
        elif place in self.line:
            self.line.remove(place)
        else:
            return
        self.move_up()

    def move_up(self) -> None:
        """Start the head of the line while workers are free, and tell everyone still waiting."""
        while self.free and self.line:
            head = self.line.popleft()
            head.running = True
            self.running += 1
            head.moved.set()
        for waiting in self.line:
            waiting.moved.set()
