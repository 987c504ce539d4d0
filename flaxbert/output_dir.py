"""Writing an output directory so that nothing a user has is ever lost.

An output (a bundle, a serving export, an HF checkpoint, a tokenizer) is written into a unique
temporary sibling and renamed into place when whole. Replacing an existing directory (a run's
own `best/` and `bundle/`) moves the old one aside first and removes it only after the new one
is in place, so a kill at any moment leaves a whole directory at the path or beside it
(`NAME.old-*`), never neither. A user's directory is never deleted: a new output must not exist
or be empty. The temporary names come from mkdtemp, so a user's own `NAME.partial` is never
taken for ours.

No flax or model imports here: the serving export path uses this and must stay loadable with
jax alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from flaxbert.errors import FlaxbertError


def _sibling(directory: str, tag: str) -> str:
  """A new, unique, empty directory beside `directory` (never one a user made)."""
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  return tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.{tag}-", dir=parent)


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


@contextlib.contextmanager
def replacing_directory(directory: str):
  """Yields a unique temporary sibling to fill; then the old `directory` (if any) is moved
  aside, the new one renamed into place, and only then the old one removed. For the
  directories a run owns and rewrites (`best/`, `bundle/`)."""
  directory = os.path.abspath(directory)
  tmp = _sibling(directory, "new")
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  old = None
  if os.path.lexists(directory):
    old = _sibling(directory, "old")
    os.rmdir(old)
    os.replace(directory, old)
  os.replace(tmp, directory)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)
