"""The processes of a multi-host run acting as one: start-up, barriers, and stopping together.

A multi-host job is N copies of the same command. Work that must happen once (training a
tokenizer, preparing a dataset, writing the workdir's identity) is done by process 0 while
the others wait at a barrier; they then check that they see the same files. When any
process fails, it posts its one-line error in the coordination service's key-value store
before exiting; every other process watches that key and exits within a second with one line
naming the failed process, instead of waiting in a collective until a timeout and aborting
with native stack traces.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import os
import sys
import threading
from typing import Callable, TypeVar

import jax
from jax._src import distributed as jax_distributed  # the coordination client jax keeps private

from flaxbert.errors import FlaxbertError

T = TypeVar("T")

ABORT_KEY = "flaxbert/abort"
EXIT_FAILED = 2
# A process that vanishes without a word (SIGKILL, a lost machine) is noticed by the
# coordination service after this many seconds without a heartbeat.
HEARTBEAT_TIMEOUT_S = 20
BARRIER_TIMEOUT_MS = 3 * 60 * 60 * 1000   # preparing a large corpus can take hours

_barrier_ids = itertools.count()
_watchdog: threading.Thread | None = None


def _client():
  """The coordination-service client of jax.distributed (None in a single-process run)."""
  return jax_distributed.global_state.client


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, detect: bool = False) -> None:
  """jax.distributed.initialize (explicit, or detected on TPU pods / SLURM), then the
  watchdog that stops this process when another one fails."""
  if coordinator:
    if num_processes is None or process_id is None:
      raise FlaxbertError("--coordinator needs --num-processes and --process-id")
    jax.distributed.initialize(coordinator, num_processes, process_id,
                               heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
  elif detect:
    jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
  else:
    return
  _start_watchdog()


def _start_watchdog() -> None:
  global _watchdog
  client = _client()
  if client is None or _watchdog is not None:
    return
  me = jax.process_index()
  stop = threading.Event()

  def watch():
    while not stop.wait(0.25):
      try:
        message = client.key_value_try_get(ABORT_KEY)
      except Exception:  # not posted (the usual case), or the service is going away
        continue
      if not message.startswith(f"process {me}:"):
        print(f"flaxbert: error: stopping: {message}", file=sys.stderr, flush=True)
        os._exit(EXIT_FAILED)   # other threads may sit in a collective that never returns

  def stop_watching():
    # Before jax.distributed's own exit handler (registered earlier, so run later) shuts the
    # client down under a thread still calling it.
    stop.set()
    _watchdog.join(timeout=5)

  _watchdog = threading.Thread(target=watch, name="flaxbert-abort-watchdog", daemon=True)
  _watchdog.start()
  atexit.register(stop_watching)


def is_multiprocess() -> bool:
  # The client first: asking jax for the process count would start a backend.
  return _client() is not None and jax.process_count() > 1


def fail(message: str) -> None:
  """Posts this process's failure for the others (multi-process runs only). The caller prints
  its own line and exits."""
  if not is_multiprocess():
    return
  try:
    _client().key_value_set(ABORT_KEY, f"process {jax.process_index()}: {message}")
  except Exception:
    pass   # another process failed first: its message is already posted


def exit_failed(code: int = EXIT_FAILED) -> None:
  """Exits at once: jax.distributed's own shutdown would wait for processes that are
  stopping too."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (a no-op for one process)."""
  if not is_multiprocess():
    return
  client = _client()
  barrier_id = f"flaxbert/{name}/{next(_barrier_ids)}"
  try:
    client.wait_at_barrier(barrier_id, BARRIER_TIMEOUT_MS)
  except Exception as e:
    raise FlaxbertError(f"processes did not meet at {name!r}: {str(e).splitlines()[0]}") \
        from None


def on_process_zero_first(fn: Callable[[], T], name: str) -> T:
  """Runs fn on process 0, then (after a barrier) on the others, which find its result."""
  result = None
  if jax.process_index() == 0:
    result = fn()
  barrier(name)
  if jax.process_index() != 0:
    result = fn()
  return result


def check_same(name: str, value: str) -> None:
  """Stops with one line unless every process computed the same `value` (say a digest of the
  files process 0 prepared)."""
  if not is_multiprocess():
    return
  client = _client()
  digest = hashlib.sha256(value.encode()).hexdigest()
  key = f"flaxbert/same/{name}"
  if jax.process_index() == 0:
    client.key_value_set(key, digest)
  barrier(f"same-{name}")
  expected = client.blocking_key_value_get(key, 60_000)
  if expected != digest:
    raise FlaxbertError(f"process {jax.process_index()} sees other {name} than process 0: "
                        "the workdir must be one shared directory for all processes")
