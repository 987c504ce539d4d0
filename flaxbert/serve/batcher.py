"""Dynamic batching: model rows of concurrent requests gathered into batches, run in one
worker thread through a fixed set of compiled shapes.

A request's rows (one per input; a long qa context gives one per window) wait in a queue per
length bucket (inference/bucketing.py). The worker takes the bucket whose oldest row has
waited longest, as soon as it holds `max_batch_size` rows or that row has waited `max_wait_ms`,
and runs up to `max_batch_size` rows of it padded to the bucket length and to the next of a
few batch sizes (powers of two up to the maximum; copies of a real row fill the slots, as
run_bucketed fills them). Every (batch size, bucket) shape is compiled before the batcher
says it is ready, so no request waits on a compile. Each row's outputs go back to its
request, which is answered when all of its rows are done.

The model runs in this one thread (the XLA call releases the GIL, so the event loop keeps
accepting and answering meanwhile); the queue is bounded: a request that would take it past
`max_queue` rows is refused (`QueueFull`), unless the queue is empty.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from typing import Callable, Sequence

import jax
import numpy as np

from flaxbert.inference import bucketing

log = logging.getLogger("flaxbert")


class QueueFull(Exception):
  """The queue holds too many rows to take a request's."""


class Closed(Exception):
  """The batcher is draining or stopped: it takes no new requests."""


def batch_sizes(max_batch_size: int) -> tuple[int, ...]:
  """Powers of two below `max_batch_size`, then it: the batch shapes compiled."""
  sizes, size = [], 1
  while size < max_batch_size:
    sizes.append(size)
    size *= 2
  return tuple(sizes) + (max_batch_size,)


class _Job:
  """One request's rows: their outputs as they come, a future for all of them."""

  def __init__(self, count: int):
    self.remaining = count
    self.outputs: dict[str, list] = {}
    self.future: concurrent.futures.Future = concurrent.futures.Future()

  def put(self, index: int, outputs: dict, count: int) -> None:
    if self.future.done():   # failed already
      return
    for name, value in outputs.items():
      self.outputs.setdefault(name, [None] * count)[index] = value
    self.remaining -= 1
    if not self.remaining:
      self.future.set_result(self.outputs)


class _Row:
  __slots__ = ("row", "job", "index", "count", "arrival")

  def __init__(self, row, job, index, count, arrival):
    self.row, self.job, self.index, self.count, self.arrival = row, job, index, count, arrival


class Batcher:
  """run(batch) (a `bucketing.CompiledCache`): {input_ids, segment_ids, input_mask}
  [batch, bucket] int32 -> {output: [batch, ...]}. `per_token`: outputs with a position axis
  (cut to each row's length); `observe_batch(rows)` / `observe_depth(rows)`: metrics."""

  def __init__(self, run: Callable[[dict], dict], *, buckets: Sequence[int], pad_id: int,
               per_token: Sequence[str] = (), max_batch_size: int = 32,
               max_wait_ms: float = 0.0, max_queue: int = 1024,
               observe_batch: Callable[[int], None] = lambda rows: None,
               observe_depth: Callable[[int], None] = lambda rows: None):
    self._run = run
    self.buckets, self.pad_id, self.per_token = tuple(sorted(buckets)), pad_id, tuple(per_token)
    self.sizes = batch_sizes(max_batch_size)
    self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
    self.max_queue = max_queue
    self._observe_batch, self._observe_depth = observe_batch, observe_depth
    self._cond = threading.Condition()
    self._pending: dict[int, collections.deque] = {b: collections.deque() for b in self.buckets}
    self._depth = 0
    self._closing = False
    self.ready = threading.Event()
    self.failure: str | None = None
    self.compile_seconds = 0.0
    self._thread: threading.Thread | None = None

  @property
  def depth(self) -> int:
    return self._depth

  @property
  def shapes(self) -> int:
    """The (batch, bucket) shapes the model function was compiled for."""
    return len(self.sizes) * len(self.buckets)

  # --- the asyncio side ----------------------------------------------------------------------

  def submit(self, rows: Sequence[dict]) -> concurrent.futures.Future:
    """Queues one request's rows; the future gives {output: [one array per row]}."""
    job = _Job(len(rows))
    if not rows:
      job.future.set_result({})
      return job.future
    with self._cond:
      if self._closing:
        raise Closed()
      if self._depth and self._depth + len(rows) > self.max_queue:
        raise QueueFull()
      now = time.monotonic()
      for index, row in enumerate(rows):
        row = {k: np.asarray(v, np.int32) for k, v in row.items()}
        bucket = bucketing.bucket_for(len(row["input_ids"]), self.buckets)
        self._pending[bucket].append(_Row(row, job, index, len(rows), now))
      self._depth += len(rows)
      self._observe_depth(self._depth)
      self._cond.notify()
    return job.future

  # --- the worker thread ---------------------------------------------------------------------

  def start(self, on_failure: Callable[[str], None] = lambda message: None) -> None:
    """Compiles every shape, then serves, in the worker thread; a failure to compile is
    `failure` (one line) and `on_failure(failure)`."""
    self._on_failure = on_failure
    self._thread = threading.Thread(target=self._work, name="flaxbert-batcher", daemon=True)
    self._thread.start()

  def close(self, timeout: float | None = None) -> None:
    """Takes no more requests, runs the queued rows, and stops the worker."""
    with self._cond:
      self._closing = True
      self._cond.notify_all()
    if self._thread is not None:
      self._thread.join(timeout)

  def _work(self) -> None:
    try:
      if not self._compile_all():
        return   # closed while compiling
    except Exception as e:  # a bug or a broken export: say it and stop serving
      self.failure = f"compiling the model failed: {type(e).__name__}: {e}".splitlines()[0]
      self._fail_queued(e)
      self._on_failure(self.failure)
      return
    self.ready.set()
    log.info("flaxbert serve: ready (%d shapes compiled in %.1f s)", self.shapes,
             self.compile_seconds)
    while (taken := self._take()) is not None:
      self._run_batch(taken)

  def _compile_all(self) -> bool:
    """Compiles (and runs once) every shape; False when closed before the end."""
    start = time.monotonic()
    for size in self.sizes:
      for bucket in self.buckets:
        with self._cond:
          if self._closing:
            return False
        ids = np.zeros((size, bucket), np.int32)
        # Waited for: the call returns before the run ends, and /ping must not say ready
        # while warm-up runs are still queued ahead of the first request.
        jax.block_until_ready(
            self._run({"input_ids": ids, "segment_ids": ids, "input_mask": np.ones_like(ids)}))
    self.compile_seconds = time.monotonic() - start
    return True

  def _take(self) -> list[_Row] | None:
    """The next batch: rows of one bucket, oldest first; None once closed and drained."""
    with self._cond:
      while True:
        queues = [q for q in self._pending.values() if q]
        if not queues:
          if self._closing:
            return None
          self._cond.wait()
          continue
        oldest = min(queues, key=lambda q: q[0].arrival)
        wait = oldest[0].arrival + self.max_wait - time.monotonic()
        if len(oldest) >= self.max_batch_size or wait <= 0 or self._closing:
          taken = [oldest.popleft() for _ in range(min(len(oldest), self.max_batch_size))]
          self._depth -= len(taken)
          self._observe_depth(self._depth)
          return taken
        self._cond.wait(wait)

  def _run_batch(self, taken: list[_Row]) -> None:
    rows = [r.row for r in taken]
    size = next(s for s in self.sizes if s >= len(rows))
    bucket = bucketing.bucket_for(max(len(r["input_ids"]) for r in rows), self.buckets)
    try:
      out = bucketing.run_bucketed(self._run, rows, size, (bucket,), per_token=self.per_token,
                                   pad_values={"input_ids": self.pad_id})
    except Exception as e:  # the request fails (500), the server keeps serving
      log.error("flaxbert: error: a batch of %d rows failed: %s: %s", len(rows),
                type(e).__name__, str(e).splitlines()[0] if str(e) else "")
      for r in taken:
        if not r.job.future.done():
          r.job.future.set_exception(e)
      return
    self._observe_batch(len(rows))
    for slot, r in enumerate(taken):
      r.job.put(r.index, {name: values[slot] for name, values in out.items()}, r.count)

  def _fail_queued(self, error: Exception) -> None:
    with self._cond:
      self._closing = True
      for queue in self._pending.values():
        while queue:
          row = queue.popleft()
          if not row.job.future.done():
            row.job.future.set_exception(error)
      self._depth = 0
