"""A one-slot, drop-oldest hand-over between a producer and a worker thread."""
from __future__ import annotations

import threading
from typing import Generic, Optional, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds only the newest item. ``put`` never blocks; a replaced item counts as dropped.

    The producer (a subscription callback) never waits on the consumer (inference),
    and memory stays bounded whatever the input rate.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._item: Optional[T] = None
        self._closed = False
        self._woken = False
        self.received = 0
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self.received += 1
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Optional[T]:
        """Newest item, or None on timeout, after close() or when woken by wake()."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._item is not None or self._closed or self._woken, timeout):
                return None
            self._woken = False
            item, self._item = self._item, None
            return item

    def wake(self) -> None:
        """Make a waiting (or the next) get() return at once, with the item if there is one."""
        with self._cond:
            self._woken = True
            self._cond.notify()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
