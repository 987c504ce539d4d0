"""Writing an output directory so that nothing a user has is ever lost.

An output (a bundle, a serving export, an HF checkpoint, a tokenizer) is written into a unique
temporary sibling and renamed into place when whole. Replacing an existing directory (a run's
own `best/` and `bundle/`) swaps the new one in with one atomic rename (renameat2
RENAME_EXCHANGE) and removes the old one last, so a kill at any moment leaves a whole
directory at the path. A user's directory is never deleted: a new output must not exist
or be empty. The temporary names come from mkdtemp, so a user's own `NAME.partial` is never
taken for ours.

No flax or model imports here: the serving export path uses this and must stay loadable with
jax alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile

from flaxbert.errors import FlaxbertError


def _sibling(directory: str, tag: str) -> str:
  """A new, unique, empty directory beside `directory` (never one a user made)."""
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  path = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.{tag}-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o777 & ~umask)   # mkdtemp's 0700 would make the output private
  return path


def check_new(directory: str, option: str = "--out") -> str:
  """`directory` as an absolute path; a one-line error when it exists and is not empty."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
    raise FlaxbertError(f"{directory}: already exists and is not empty; nothing was written "
                        f"(choose a new {option})")
  return directory


@contextlib.contextmanager
def new_directory(directory: str, option: str = "--out"):
  """Yields a unique temporary sibling of `directory` to fill, then renames it into place, so
  a failure or a kill never leaves a half-written output. Refuses a non-empty `directory`
  (`option` names the flag that chose it, for the message)."""
  directory = check_new(directory, option)
  tmp = _sibling(directory, "partial")
  try:
    yield tmp
    if os.path.isdir(directory):
      os.rmdir(directory)  # empty, checked above; rmdir refuses if someone filled it since
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
