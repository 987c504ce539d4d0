"""The `flaxbert` command: argument parsing and a call into the library per subcommand.

Bad input surfaces as `FlaxbertError`, printed as one line (`flaxbert: error: ...`) with exit
status 2; an interrupt exits 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

import jax
from absl import logging as absl_logging

from flaxbert import __version__, compilation_cache, multihost
from flaxbert.commands import register_all
from flaxbert.errors import FlaxbertError, os_error_line

EXIT_USER_ERROR = 2


def build_parser(argv=()) -> argparse.ArgumentParser:
  """The parser of the command `argv` names (of every command when it names none)."""
  parser = argparse.ArgumentParser(
      prog="flaxbert", description="BERT and Transformer encoder-decoders in JAX/Flax.")
  parser.add_argument("--version", action="version", version=f"flaxbert {__version__}")
  parser.add_argument("--no-compilation-cache", dest="compilation_cache", action="store_false",
                      help="compile every program anew instead of keeping compiled programs "
                      "for the next run in the cache directory ($FLAXBERT_CACHE_DIR/jax, "
                      "default ~/.cache/flaxbert/jax); also FLAXBERT_NO_COMPILATION_CACHE=1")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  register_all(sub, argv)
  return parser


def _quiet_libraries() -> None:
  """flaxbert says what failed in one line of its own; the libraries' logged tracebacks of
  the same failure (Orbax logs each failed background write) are shown only with
  FLAXBERT_DEBUG=1."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
  level = logging.INFO if os.environ.get("FLAXBERT_DEBUG") else logging.CRITICAL
  for noisy in ("absl", "jax", "orbax", "etils"):
    logging.getLogger(noisy).setLevel(level)
  absl_logging.set_verbosity(absl_logging.INFO if level == logging.INFO else absl_logging.FATAL)
  if level != logging.INFO:
    sys.excepthook = _main_thread_excepthook


def _main_thread_excepthook(kind, value, tb) -> None:
  """Tracebacks of the main thread (flaxbert's bugs) as usual; errors that native libraries
  print from their own threads (TensorStore callbacks of a write flaxbert already reported
  failed) are dropped."""
  if threading.current_thread() is threading.main_thread():
    sys.__excepthook__(kind, value, tb)


def _use_compilation_cache(enabled: bool) -> dict:
  """Sets JAX's persistent compilation cache up for this run (see flaxbert.compilation_cache);
  returns the settings it replaced."""
  updates, warning = compilation_cache.plan(enabled, jax.config.jax_compilation_cache_dir)
  if warning:
    logging.getLogger("flaxbert").warning("flaxbert: warning: %s", warning)
  previous = {name: getattr(jax.config, name) for name in updates}
  for name, value in updates.items():
    jax.config.update(name, value)
  return previous


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = build_parser(argv).parse_args(argv)
  _quiet_libraries()
  replaced = _use_compilation_cache(args.compilation_cache)
  try:
    args.func(args)
  except FlaxbertError as e:
    return _fail(str(e))
  except OSError as e:   # a full disk, a read-only or unreadable path: say which
    return _fail(os_error_line(e, getattr(e, "filename", None) or "."))
  except KeyboardInterrupt:
    print("flaxbert: interrupted", file=sys.stderr)
    return 130
  except BaseException as e:
    if not isinstance(e, SystemExit):   # a bug: the other processes stop too, this one
      multihost.fail(f"{type(e).__name__}: {e}")   # keeps its traceback
    raise
  finally:   # main() called from a program leaves its JAX settings as they were
    for name, value in replaced.items():
      jax.config.update(name, value)
  return 0


def _fail(message: str) -> int:
  print(f"flaxbert: error: {message}", file=sys.stderr, flush=True)
  if multihost.is_multiprocess():
    multihost.fail(message)
    multihost.exit_failed(EXIT_USER_ERROR)
  return EXIT_USER_ERROR


def entry(argv: list[str] | None = None) -> None:
  """The console script: main(), then exit. After a failure the process ends at once: the
  one line is said, and background writers abandoned mid-write (Orbax, TensorStore) would
  only add their own tracebacks while the interpreter shuts down."""
  code = main(argv)
  if code:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


if __name__ == "__main__":
  entry()
