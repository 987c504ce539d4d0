"""Orbax checkpoints of a run: train state (sharded), data iterator position (per process).

Saves are asynchronous and keep the newest N. Restoring walks from the newest checkpoint back:
one that cannot be read (corrupt, truncated) is reported, deleted and the one before it used.
A half-written checkpoint (killed mid-save) never becomes visible: Orbax writes into a
temporary directory and renames it on commit; such leftovers are reported and cleaned.
"""

from __future__ import annotations

import json
import logging
import os

import grain
import orbax.checkpoint as ocp

log = logging.getLogger("flaxbert")


class _IteratorStateBytes:
  """Adapts a flaxbert BatchIterator to grain's Orbax handler (one JSON file per process)."""

  def __init__(self, iterator):
    self._iterator = iterator

  def get_state(self) -> bytes:
    return json.dumps(self._iterator.get_state()).encode()

  def set_state(self, state: bytes) -> None:
    self._iterator.set_state(json.loads(state.decode()))

  def start_prefetch(self) -> None:
    pass


class RunCheckpoints:
  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    partial = sorted(n for n in os.listdir(self.directory) if ".orbax-checkpoint-tmp" in n)
    for name in partial:
      log.warning("flaxbert: skipping half-written checkpoint %s (the run was stopped while "
                  "saving it)", name)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iterator, force: bool = False) -> bool:
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(_IteratorStateBytes(data_iterator))), force=force)

  def restore(self, abstract_state, data_iterator):
    """(step, state) of the newest readable checkpoint, the iterator moved to its position;
    None when there is no checkpoint."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(_IteratorStateBytes(data_iterator))))
      except Exception as e:  # Orbax/TensorStore raise many types for a damaged checkpoint
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        log.warning("flaxbert: checkpoint %d is unreadable (%s); deleting it and trying the "
                    "one before", step, reason)
        self._manager.delete(step)
        continue
      return step, restored["state"]
    return None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
