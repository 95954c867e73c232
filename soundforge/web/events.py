"""Live progress for every browser from one database connection: a thread holds the server
process's only `LISTEN soundforge_progress` connection and hands each event to every subscriber
(a Server-Sent Events stream) through a bounded queue.

A subscriber that falls behind (its queue is full) loses events, not memory: it is told to
`resync` (re-read the rows, which are the truth) instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import psycopg

from soundforge import live
from soundforge.errors import SoundForgeError

log = logging.getLogger(__name__)
LISTENER_NAME = "soundforge-web-events"
RESYNC = json.dumps({"type": "resync"})


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[str]
    lagging: bool = False


@dataclass
class BroadcastStats:
    events: int = 0
    connections_opened: int = 0
    subscribers: int = 0
    dropped: int = 0
    per_subscriber_queue: int = 0
    listening: bool = False
    last_error: str | None = field(default=None, repr=False)


class ProgressBroadcaster:
    """Fans `soundforge_progress` out to subscribers; `start` on the event loop that serves
    them, `close` on shutdown."""

    def __init__(self, conninfo: str, queue_size: int = 256, poll_s: float = 0.5) -> None:
        self._conninfo = conninfo
        self._queue_size = queue_size
        self._poll_s = poll_s
        self._subscribers: set[Subscriber] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = BroadcastStats(per_subscriber_queue=queue_size)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="progress-listener", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with live.open_listener(self._conninfo) as conn:
                    conn.execute("SET application_name = '" + LISTENER_NAME + "'")
                    self.stats.connections_opened += 1
                    self.stats.listening = True
                    for event in live.events(conn, self._poll_s):
                        if self._stop.is_set():
                            return
                        if event is not None:
                            self._publish(json.dumps({"type": "progress", **event.__dict__}))
            except (psycopg.Error, SoundForgeError) as error:
                self.stats.last_error = type(error).__name__
                log.warning("progress listener lost its connection (%s); reconnecting",
                            type(error).__name__)  # fmt: skip
            finally:
                self.stats.listening = False
            if self._stop.wait(1.0):
                return
            if self._loop is not None:  # events may have been missed meanwhile
                self._publish(RESYNC)

    def _publish(self, message: str) -> None:
        self.stats.events += 1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._fan_out, message)

    def _fan_out(self, message: str) -> None:
        for subscriber in self._subscribers:
            if subscriber.lagging:
                continue
            try:
                subscriber.queue.put_nowait(message)
            except asyncio.QueueFull:
                subscriber.lagging = True
                self.stats.dropped += 1

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscriber]:
        subscriber = Subscriber(asyncio.Queue(self._queue_size))
        self._subscribers.add(subscriber)
        self.stats.subscribers = len(self._subscribers)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)
            self.stats.subscribers = len(self._subscribers)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)


async def next_message(subscriber: Subscriber, timeout_s: float) -> str | None:
    """The subscriber's next message; RESYNC once after it lagged; None after `timeout_s`."""
    if subscriber.lagging:
        while not subscriber.queue.empty():
            subscriber.queue.get_nowait()
        subscriber.lagging = False
        return RESYNC
    try:
        return await asyncio.wait_for(subscriber.queue.get(), timeout_s)
    except TimeoutError:
        return None
