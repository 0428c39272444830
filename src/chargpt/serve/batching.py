"""The server's decode loops: one per loaded model, on a thread of its own, advancing every completion of that
model by one token per batched step (`chargpt.model.batchdecode`). Between steps, completions that ended leave
and waiting requests take the free rows; past `--max-streams` rows requests wait in a queue, and past the queue
they are refused (503, Retry-After)."""
from __future__ import annotations

import sys
import threading
from collections import deque

from ..model.batchdecode import BatchDecoder, Row, default_rows
from ..model.engine import Engine

DECODING = threading.Lock()  # one batched step at a time, whichever model's: the loops take turns on the cores
IDLE_SECONDS = 30.0  # a loop with nothing to decode for this long ends (its thread and its cache go)
QUEUE_PER_ROW = 4  # requests waiting for a row, at most, per row; more are refused
RETRY_SECONDS = 2  # what a refused request's Retry-After asks


class Busy(Exception):
    """Every row is decoding and the queue is full: the request is refused, to be sent again later."""


class DecodeLoop:
    """One model's completions: a `BatchDecoder` of `rows` rows, and the requests waiting for a row.

    `submit` hands over a completion (`chargpt.serve.generation.Generation`: its `ids`, `sampling`, `cancelled`,
    `feed`); its tokens go to its `feed` as they are sampled. The thread ends after IDLE_SECONDS without work."""

    def __init__(self, engine: Engine, rows: int, counters, name: str = ""):
        self.batch = BatchDecoder(engine, rows)
        self.rows, self.counters = rows, counters
        self.waiting: deque = deque()
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"chargpt-decode {name}".strip(), daemon=True)
        self._thread.start()

    def submit(self, gen) -> bool:
        """Queue `gen` for a row; False if this loop has ended (ask for a new one). Raises `Busy` when full."""
        with self._cond:
            if self.closed:
                return False
            if len(self.waiting) >= QUEUE_PER_ROW * self.rows:
                raise Busy(f"all {self.rows} streams of this model are busy and {len(self.waiting)} requests wait; "
                           f"send the request again in a few seconds")
            self.waiting.append(gen)
            self.counters.queue(+1)
            self._cond.notify()
        return True

    @property
    def active(self) -> int:
        return len(self.batch.rows)

    def _run(self) -> None:
        try:
            while self._admit():
                with DECODING:
                    sampled = self.batch.step()
                self.counters.add(len(sampled))
                for row, token in sampled:
                    if row.tag.feed(token, row.done) or row.done:
                        self._leave(row)
        except Exception as e:  # noqa: BLE001 -- every completion of this model ends, saying why
            self._fail(e)

    def _admit(self) -> bool:
        """Between two steps: rows whose completion ended leave, waiting requests take the free rows. False
        (and the loop closed) after IDLE_SECONDS with nothing to decode."""
        for row in [r for r in self.batch.rows if r.tag.cancelled]:
            self._leave(row)
        with self._cond:
            while True:
                while self.waiting and self.batch.free:
                    gen = self.waiting.popleft()
                    self.counters.queue(-1)
                    if not gen.cancelled:
                        self.batch.add(gen.ids, gen.sampling, tag=gen)
                        self.counters.streams(+1)
                if self.batch.rows:
                    return True
                if not self._cond.wait(IDLE_SECONDS) and not self.waiting:
                    self.closed = True
                    return False

    def _leave(self, row: Row) -> None:
        self.batch.remove(row)  # a row that reached its length has left already
        self.counters.streams(-1)

    def _fail(self, error: Exception) -> None:
        message = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        print(f"chargpt serve: decoding failed: {message}", file=sys.stderr, flush=True)
        with self._cond:
            self.closed = True
            ended = [r.tag for r in self.batch.rows] + list(self.waiting)
            self.counters.streams(-len(self.batch.rows))
            self.counters.queue(-len(self.waiting))
            self.waiting.clear()
        for gen in ended:
            gen.fail(f"the server failed while sampling: {message}")


class Scheduler:
    """The decode loops of the served models, one per `Engine` (so one per checkpoint version), made on the first
    request and ended when idle; each has `max_streams` rows (0: as many as memory allows, `default_rows`)."""

    def __init__(self, counters, max_streams: int = 0):
        self.counters, self.max_streams = counters, max_streams
        self._loops: dict[int, tuple[Engine, DecodeLoop]] = {}
        self._lock = threading.Lock()

    def submit(self, engine: Engine, gen, name: str = "") -> None:
        """Queue the completion `gen` on `engine`'s loop. Raises `Busy` when the loop's queue is full."""
        with self._lock:
            self._loops = {k: v for k, v in self._loops.items() if not v[1].closed}
            while True:
                found = self._loops.get(id(engine))
                if found is None or found[1].closed:
                    rows = self.max_streams or default_rows(engine)
                    found = self._loops[id(engine)] = engine, DecodeLoop(engine, rows, self.counters, name)
                if found[1].submit(gen):
                    return

    def status(self) -> list[dict]:
        """Each running loop: its rows, those decoding, the requests waiting and the forward pass it decodes with."""
        with self._lock:
            loops = [loop for _, loop in self._loops.values() if not loop.closed]
        return [{"rows": loop.rows, "active": loop.active, "queued": len(loop.waiting), "backend": loop.batch.backend,
                 "batched_from": loop.batch.batch_from} for loop in loops]
