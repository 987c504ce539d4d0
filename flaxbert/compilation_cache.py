"""JAX's persistent compilation cache, on for every flaxbert command: a second run of the same
command loads the programs the first one compiled instead of compiling them again (on a CPU,
compiling is most of a short command's time).

  where   $FLAXBERT_CACHE_DIR/jax, else $XDG_CACHE_HOME/flaxbert/jax, else ~/.cache/flaxbert/jax
  off     `flaxbert --no-compilation-cache COMMAND ...`, or FLAXBERT_NO_COMPILATION_CACHE=1

A cache JAX was already told about (JAX_COMPILATION_CACHE_DIR, or jax.config in a program that
calls the CLI) is left as it is, settings and all: flaxbert only supplies a default.

Processes may share the directory: the size bound below makes JAX hold a file lock around
every read and write of an entry, and in a multi-host job only process 0 writes (JAX's rule).

This module does not import jax, so the test suite can put `jax_settings` into the environment
(as JAX_* variables) before jax is imported: JAX reads its settings from there.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile

ENV_DIR = "FLAXBERT_CACHE_DIR"
ENV_OFF = "FLAXBERT_NO_COMPILATION_CACHE"
# The least recently used entries are dropped beyond this size, so a per-user directory does
# not grow without end. JAX's lock (filelock) comes with the bound; without filelock, which
# flaxbert does not require, the cache is unbounded and unlocked (an entry read while another
# process writes it is cut short, fails to decompress: a JAX warning and a recompile).
MAX_SIZE_BYTES = 2 << 30


def directory(environ=os.environ) -> str | None:
  """Where flaxbert keeps compiled programs unless JAX was given a cache of its own (None: no
  home directory to put a per-user cache in, and no FLAXBERT_CACHE_DIR)."""
  root = environ.get(ENV_DIR)
  if not root:
    base = environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):   # unset, or relative (which the XDG spec says to ignore)
      base = os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):   # "~" unresolved: never a directory relative to the cwd
      return None
    root = os.path.join(base, "flaxbert")
  return os.path.join(os.path.abspath(root), "jax")


def jax_settings(cache_dir: str, max_size: int = MAX_SIZE_BYTES) -> dict:
  """The JAX config values of a cache at `cache_dir` that keeps every program."""
  locked = importlib.util.find_spec("filelock") is not None
  return {
      "jax_compilation_cache_dir": cache_dir,
      # JAX keeps only programs that took a second to compile by default; a short CPU command
      # compiles many small ones (each a few ms to load back), which add up to seconds.
      "jax_persistent_cache_min_compile_time_secs": 0.0,
      "jax_persistent_cache_min_entry_size_bytes": -1,
      "jax_compilation_cache_max_size": max_size if locked else -1,
  }


def is_disabled(environ=os.environ) -> bool:
  return environ.get(ENV_OFF, "").strip().lower() not in ("", "0", "false", "no")


def plan(enabled: bool, configured_dir: str | None,
         environ=os.environ) -> tuple[dict, str | None]:
  """(JAX config updates for this run, a one-line warning or None).

  configured_dir: the cache directory JAX already has (jax.config.jax_compilation_cache_dir).
  An unusable directory turns the cache off with one warning rather than failing the run,
  or JAX warning once per compiled program: the command works, only slower, and the line
  says how to fix or silence it.
  """
  if not enabled or is_disabled(environ):
    return {"jax_enable_compilation_cache": False}, None
  cache_dir = configured_dir or directory(environ)
  problem = unwritable(cache_dir) if cache_dir else "no home directory for the default one"
  if problem:
    fix = "JAX_COMPILATION_CACHE_DIR" if configured_dir else ENV_DIR
    return {"jax_enable_compilation_cache": False}, (
        f"compilation cache off, every program is compiled anew ({problem}); set {fix} to "
        f"a writable directory, or pass --no-compilation-cache")
  return ({} if configured_dir else jax_settings(cache_dir)), None


def unwritable(cache_dir: str) -> str | None:
  """Why `cache_dir` cannot hold cache entries (one line), or None when it can."""
  try:
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=cache_dir):
      pass
  except OSError as e:
    return f"{getattr(e, 'filename', None) or cache_dir}: {e.strerror or e}"
  return None
