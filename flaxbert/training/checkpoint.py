"""Orbax checkpoints of a run: train state (sharded), data iterator position (per process).

Saves are asynchronous and keep the newest N. Restoring never deletes anything:
- the newest checkpoint is restored; one whose structure or shapes differ from the run's
  (other settings) is an error naming the difference, and so is any OSError (EIO, EACCES...);
- only a checkpoint whose own files are proven damaged (its metadata unreadable, or its data
  failing to decode while its metadata matches the run) is moved aside to
  `checkpoints/unreadable-N/` and the one before it tried;
- when checkpoints existed but none could be read, the run stops instead of starting at step 0.
A half-written checkpoint (killed mid-save) never becomes visible: Orbax writes into a
temporary directory and renames it on commit; such leftovers are reported and cleaned.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil

import grain
import jax
import orbax.checkpoint as ocp

from flaxbert import multihost
from flaxbert.bundle.store import this_process_only
from flaxbert.errors import FlaxbertError, os_error_line

log = logging.getLogger("flaxbert")

UNREADABLE_PREFIX = "unreadable-"
# Words by which TensorStore and Orbax report an operating-system failure inside an error of
# another type: such a failure says nothing about the checkpoint's own bytes.
_OS_FAILURE_WORDS = tuple(os.strerror(e) for e in (
    errno.EIO, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT,
    errno.ENOMEM, errno.EMFILE, errno.ESTALE, errno.ETIMEDOUT)) + ("PERMISSION_DENIED",
                                                                   "RESOURCE_EXHAUSTED")


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


def os_failure(error: BaseException) -> OSError | str | None:
  """The operating-system failure behind `error` (walking its causes), if any."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
      return error
    text = str(error)
    for words in _OS_FAILURE_WORDS:
      if words in text:
        return words
    error = error.__cause__ or error.__context__
  return None


def _key(path) -> str:
  """'params/bert/encoder/...' for a tree path, whether the tree holds dicts (a checkpoint's
  metadata) or dataclass fields (the train state)."""
  names = []
  for entry in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(entry, attribute):
        names.append(str(getattr(entry, attribute)))
        break
    else:
      names.append(str(entry))
  return "/".join(names)


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else type(error).__name__


class RunCheckpoints:
  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    try:
      os.makedirs(self.directory, exist_ok=True)
      partial = sorted(n for n in os.listdir(self.directory) if ".orbax-checkpoint-tmp" in n)
    except OSError as e:
      raise FlaxbertError(os_error_line(e, self.directory)) from None
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
    if force or self._manager.should_save(step):
      self._check_space(step, state)
    try:
      return self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(_IteratorStateBytes(data_iterator))),
                                force=force)
    except Exception as e:
      raise self._save_error(e, step) from None

  def _check_space(self, step: int, state) -> None:
    """Stops before writing when the checkpoint cannot fit: a write that runs out of space
    midway fails in many background threads at once."""
    needed = sum(shard.data.nbytes for leaf in jax.tree.leaves(state)
                 if isinstance(leaf, jax.Array)
                 for shard in leaf.addressable_shards if shard.replica_id == 0)
    needed = int(needed * 1.05) + (1 << 20)   # file headers, metadata, the data iterator
    try:
      free = shutil.disk_usage(self.directory).free
    except OSError:
      return
    if free < needed:
      raise FlaxbertError(
          f"cannot write checkpoint {step}: {self.directory}: {os.strerror(errno.ENOSPC)} "
          f"(it needs about {needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free); "
          f"{self._kept()}")

  def _save_error(self, error: BaseException, step: int | None) -> FlaxbertError:
    """One line for a failed save: the path, the OS reason, the checkpoint still good."""
    where = f"checkpoint {step}" if step is not None else "a checkpoint"
    reason = os_error_line(os_failure(error) or _first_line(error), self.directory)
    return FlaxbertError(f"cannot write {where}: {reason}; {self._kept()}")

  def _kept(self) -> str:
    """What a failed save leaves: the newest committed checkpoint, if any."""
    try:
      good = [int(n) for n in os.listdir(self.directory) if n.isdigit()]
    except OSError:
      good = []
    return (f"the last good checkpoint (step {max(good)}) is kept" if good
            else "no checkpoint was written yet")

  def restore(self, abstract_state, data_iterator):
    """(step, state) of the newest readable checkpoint, the iterator moved to its position;
    None when there is no checkpoint."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      path = os.path.join(self.directory, str(step))
      self._check_compatible(step, path, abstract_state)
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(_IteratorStateBytes(data_iterator))))
      except FlaxbertError:
        raise
      except Exception as e:  # Orbax/TensorStore raise many types for a damaged checkpoint
        if "not compatible with the stored shape" in str(e):
          raise FlaxbertError(f"checkpoint {step} in {self.directory}: {_first_line(e)}: it "
                              "was written by a run with other settings") from None
        failure = os_failure(e)
        if failure is not None:
          raise FlaxbertError(f"cannot read checkpoint {step}: {os_error_line(failure, path)}; "
                              "nothing was changed, re-run when the storage is healthy") \
              from None
        self._move_aside(step, path, _first_line(e))
        continue
      return step, restored["state"]
    if steps:
      raise FlaxbertError(
          f"{self.directory}: no readable checkpoint (moved aside: "
          f"{', '.join(UNREADABLE_PREFIX + str(s) for s in steps)}); the run does not start "
          "again from step 0 over them: use a new --workdir, or move them out of the way")
    return None

  def _check_compatible(self, step: int, path: str, abstract_state) -> None:
    """Structure and shapes of checkpoint `step` against the run's: a difference means other
    settings (an error), an unreadable metadata file means damage (moved aside)."""
    try:
      # Read through a checkpointer of its own: a fresh manager knows no handler for the
      # items yet and would answer None.
      checkpointer = ocp.StandardCheckpointer(multiprocessing_options=this_process_only())
      try:
        stored = checkpointer.metadata(os.path.join(path, "state"))
      finally:
        checkpointer.close()
      stored = getattr(stored, "item_metadata", stored)
    except Exception as e:
      failure = os_failure(e)
      if failure is not None:
        raise FlaxbertError(f"cannot read checkpoint {step}: {os_error_line(failure, path)}") \
            from None
      return   # damaged metadata: restore fails next and the checkpoint is moved aside
    if stored is None:
      return
    try:
      have = {_key(path): leaf for path, leaf in
              jax.tree_util.tree_flatten_with_path(stored)[0]}
    except Exception:
      return
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
      key = _key(path)
      if key not in have:
        raise FlaxbertError(f"checkpoint {step} in {self.directory} has no {key}: it was "
                            "written by a run with other settings")
      shape = getattr(have[key], "shape", None)
      if shape is not None and tuple(shape) != tuple(leaf.shape):
        raise FlaxbertError(f"checkpoint {step} in {self.directory}: {key} has shape "
                            f"{tuple(shape)} but this run's is {tuple(leaf.shape)}: it was "
                            "written by a run with other settings")

  def _move_aside(self, step: int, path: str, reason: str) -> None:
    aside = os.path.join(self.directory, f"{UNREADABLE_PREFIX}{step}")
    n = 1
    while os.path.exists(aside):
      n += 1
      aside = os.path.join(self.directory, f"{UNREADABLE_PREFIX}{step}.{n}")
    if jax.process_index() == 0:
      try:
        os.replace(path, aside)
      except OSError as e:
        raise FlaxbertError(os_error_line(e, path)) from None
    log.warning("flaxbert: checkpoint %d is unreadable (%s); moved aside to %s, trying the "
                "one before", step, reason, aside)
    if jax.process_count() > 1:
      multihost.barrier(f"checkpoint-aside-{step}")
    self._manager.reload()

  def wait(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise self._save_error(e, None) from None

  def close(self) -> None:
    self.wait()
    self._manager.close()

  def abandon(self) -> None:
    """Closes the manager after a failure, ignoring what else fails on the way out."""
    try:
      self._manager.close()
    except Exception:
      pass
