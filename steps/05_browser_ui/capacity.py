"""First come, first served access to the dirty workers.

A dirty worker serves one request at a time, and the arbiter hands requests
to workers in turn without looking at how busy they are. So the HTTP worker
keeps the count itself: at most `workers` requests run at once, the next
`max_waiting` wait in line in arrival order, and anyone beyond that is told
at once to come back later.
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
                    raise Busy(
                        f"waited {give_up_after:.0f} s for a free model worker",
                        self.capacity.retry_after,
                    ) from None

    async def wait_turn(self, give_up_after: float) -> None:
        """Wait quietly for this request's turn, for answers that cannot stream."""
        async for _position in self.turn(give_up_after, give_up_after):
            pass

    def leave(self) -> None:
        """Give the worker back, or step out of the line."""
        self.capacity.release(self)


class Capacity:
    def __init__(self, workers: int, max_waiting: int, retry_after: int):
        self.free = workers
        self.max_waiting = max_waiting
        self.retry_after = retry_after
        self.line: deque[Place] = deque()

    def join(self) -> Place:
        """Take a free worker, or a place in line; raise Busy if the line is full."""
        place = Place(self)
        if self.free:
            self.free -= 1
            place.running = True
        elif len(self.line) < self.max_waiting:
            self.line.append(place)
        else:
            raise Busy("every model worker is busy and the line is full", self.retry_after)
        return place

    def release(self, place: Place) -> None:
        if place.running:
            place.running = False
            self.free += 1
        elif place in self.line:
            self.line.remove(place)
        else:
            return
        while self.free and self.line:
            head = self.line.popleft()
            head.running = True
            self.free -= 1
            head.moved.set()
        # Everyone still waiting has moved up one place.
        for waiting in self.line:
            waiting.moved.set()
