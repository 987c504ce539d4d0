"""What every bundle shares: the Bundle record, its parameter store (Orbax), and writing a
directory so that nothing a user has is ever lost.

A bundle (or an export, or an HF checkpoint written by `convert --to-hf`) is written into a
unique temporary sibling and renamed into place when whole. Replacing an existing bundle (the
run's own `best/` and `bundle/`) moves the old one aside first and removes it only after the
new one is in place, so a kill at any moment leaves a whole bundle at the path or beside it
(`NAME.old-*`), never neither. A user's directory is never deleted: a new output must not
exist or be empty.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import os
import shutil
import tempfile
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from flaxbert.data.tokenizer import Tokenizer
from flaxbert.errors import FlaxbertError

FORMAT = "flaxbert-bundle"
FORMAT_VERSION = 1


@dataclasses.dataclass
class Bundle:
  """A loaded model. Unpacks as `model, params, tokenizer = flaxbert.load(path)`."""

  model: nn.Module
  params: Any
  tokenizer: Tokenizer
  config: Any            # BertConfig or EncDecConfig
  head: str
  labels: list[str] | None = None

  def __iter__(self):
    return iter((self.model, self.params, self.tokenizer))


def _sibling(directory: str, tag: str) -> str:
  """A new, unique, empty directory beside `directory` (never one a user made)."""
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  path = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.{tag}-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o777 & ~umask)   # mkdtemp's 0700 would make the output private
  return path


@contextlib.contextmanager
def new_directory(directory: str):
  """Yields a unique temporary sibling of `directory` to fill, then renames it into place, so
  a failure or a kill never leaves a half-written output. Refuses a non-empty `directory`."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
    raise FlaxbertError(f"{directory}: already exists and is not empty; choose a new --out")
  tmp = _sibling(directory, "partial")
  try:
    yield tmp
    if os.path.isdir(directory):
      os.rmdir(directory)  # empty, checked above
    os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)   # ours alone: made above with a unique name
    raise


_RENAME_EXCHANGE = 2   # renameat2 flag: swap two paths in one atomic step (Linux)
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
  """Atomically swaps the directories at `a` and `b`; False where the system cannot."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                        ctypes.c_uint)
  if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
    return True
  error = ctypes.get_errno()
  if error in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
    return False   # a file system without the flag: fall back to two renames
  raise OSError(error, os.strerror(error), b)


@contextlib.contextmanager
def replacing_directory(directory: str):
  """Yields a unique temporary sibling to fill; then swaps it with `directory` in one atomic
  step (renameat2 RENAME_EXCHANGE) and removes the old one last. Where the system cannot
  swap, the old directory is renamed aside first and the new one into place, and
  `recover_replaced` puts the old one back if a kill fell between the two renames. For the
  directories a run owns and rewrites (`best/`, `bundle/`)."""
  directory = os.path.abspath(directory)
  recover_replaced(directory)
  tmp = _sibling(directory, "new")
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if not os.path.lexists(directory):
    os.replace(tmp, directory)
    return
  if _exchange(tmp, directory):
    shutil.rmtree(tmp, ignore_errors=True)   # now holds the old directory
    return
  old = _sibling(directory, "old")
  os.rmdir(old)
  os.replace(directory, old)
  os.replace(tmp, directory)
  shutil.rmtree(old, ignore_errors=True)


def recover_replaced(directory: str) -> None:
  """If a replacement was killed between its two renames (no `directory`, its old version
  beside it), renames the old version back."""
  directory = os.path.abspath(directory)
  if os.path.lexists(directory):
    return
  parent, name = os.path.split(directory)
  if not os.path.isdir(parent):
    return
  olds = sorted((n for n in os.listdir(parent) if n.startswith(f".{name}.old-")),
                key=lambda n: os.path.getmtime(os.path.join(parent, n)))
  if olds:
    os.replace(os.path.join(parent, olds[-1]), directory)


def _this_process_only():
  """Orbax options for a save or restore done by this process alone (bundles are written by
  one process; Orbax's default would wait for every process of a multi-host job)."""
  me = jax.process_index()
  return ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"bundle{me}")


def save_params(path: str, params) -> None:
  """Writes host (numpy) parameters; multi-host callers gather them first."""
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=_this_process_only())
  checkpointer.save(os.path.abspath(path), jax.tree.map(np.asarray, params))
  checkpointer.wait_until_finished()
  checkpointer.close()


def restore_params(path: str, abstract_params):
  """Restores into the shapes/dtypes of `abstract_params`; a mismatch is a one-line error."""
  if not os.path.isdir(path):
    raise FlaxbertError(f"{path}: no such parameter checkpoint")
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=_this_process_only())
  try:
    stored = checkpointer.metadata(os.path.abspath(path))
    stored_tree = getattr(stored, "item_metadata", stored)
    check_tree(stored_tree, abstract_params, path)
    return checkpointer.restore(os.path.abspath(path), abstract_params)
  except FlaxbertError:
    raise
  except OSError as e:
    raise FlaxbertError(f"{getattr(e, 'filename', None) or path}: {e.strerror or e}") from None
  except (ValueError, KeyError) as e:
    raise FlaxbertError(f"{path}: cannot restore parameters ({str(e).splitlines()[0]})") \
        from None
  finally:
    checkpointer.close()


def check_tree(stored, want, source: str, path: str = "") -> None:
  """Same keys and shapes in `stored` (metadata or arrays) as in `want`; else one line."""
  if isinstance(want, dict):
    stored_keys = set(stored) if hasattr(stored, "keys") else set()
    if stored_keys != set(want):
      raise FlaxbertError(f"{source}: parameters under '{path or '/'}' are "
                          f"{sorted(stored_keys)}, the config implies {sorted(want)}")
    for key in want:
      check_tree(stored[key], want[key], source, f"{path}/{key}" if path else key)
  elif tuple(stored.shape) != tuple(want.shape):
    raise FlaxbertError(f"{source}: {path} has shape {tuple(stored.shape)} but the config "
                        f"implies {tuple(want.shape)}")
