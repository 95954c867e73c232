"""Continuous batching: separations that arrive while others run join their batch stream.

`JoinedStreams` keeps one `SongFeed` and, while songs are queued in it, one driver thread that
runs a stream over it (`stream_feed`) and hands each song's blocks to that song's sink. A caller
(one thread per separation) offers its song and waits until the song has left the stream; the
song joins at the next batch the stream plans and leaves as soon as its last block is out, so a
short song that arrives during a long one finishes first, and the long one never waits for it.
When the stream has nothing left to run it ends and the driver thread with it; the next song
starts a new one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from soundforge.errors import JobAbortedError
from soundforge.separation.streaming import SongFeed, SongStream, StemBlock

logger = logging.getLogger(__name__)

Sink = Callable[[StemBlock], None]
RunStream = Callable[[SongFeed], Iterator[tuple[SongStream, StemBlock]]]
POLL_S = 0.1  # how often a queued song's caller checks its abort


class JoinedStreams:
    """Songs from several threads in one stream at a time, at most `capacity` of them planning
    at once (see `SongFeed`); `run_stream(feed)` is the stream (the model and its settings)."""

    def __init__(self, run_stream: RunStream, capacity: int) -> None:
        self.feed = SongFeed(capacity)
        self._run_stream = run_stream
        self._lock = threading.Lock()
        self._sinks: dict[int, Sink] = {}
        self._driver: threading.Thread | None = None

    def run(self, song: SongStream, sink: Sink, should_abort: Callable[[], bool]) -> None:
        """Separate `song` in the running stream (starting one when none runs), its blocks
        going to `sink` on the driver thread; returns once the song is done. Raises the error
        that dropped it (its `after_segment` raising, a failing sink, the model), or
        `JobAbortedError` when `should_abort()` turns true before the song joined."""
        with self._lock:
            self._sinks[id(song)] = sink
            self.feed.offer(song)
            if self._driver is None:
                self._driver = threading.Thread(target=self._drive, name="separation-stream",
                                                daemon=True)  # fmt: skip
                self._driver.start()
        try:
            while not song.left.wait(POLL_S):
                if should_abort() and self.feed.withdraw(song):
                    raise JobAbortedError("separation stopped before it joined the stream")
        finally:
            with self._lock:
                del self._sinks[id(song)]
        if song.error is not None:
            raise song.error

    def _drive(self) -> None:
        while True:
            with self._lock:
                if not self.feed.waiting:
                    self._driver = None
                    return
            try:
                for song, block in self._run_stream(self.feed):
                    try:
                        self._sinks[id(song)](block)
                    except Exception as error:  # this song's spool (disk full): it alone fails
                        self.feed.drop(song, error)
            except Exception:  # every song in the stream has left with the error
                logger.debug("separation stream failed", exc_info=True)
