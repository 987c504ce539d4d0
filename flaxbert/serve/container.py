"""The `serve` console script: flaxbert as a SageMaker "bring your own container" model server.

SageMaker starts an inference container as `docker run IMAGE serve` with the model's files
unpacked at /opt/ml/model, then sends GET /ping and POST /invocations to port 8080 and stops
the container with SIGTERM. This module turns that contract into one `flaxbert serve` command
line and runs it, so the container and the `flaxbert serve` command are one server with one set
of options, errors and shutdown (SIGTERM drains in-flight requests, then exit 0):

  serve [serve] [MODEL_DIR] [flaxbert serve options...]

- A leading literal `serve` (the argument SageMaker passes) is dropped.
- The model: MODEL_DIR, else $FLAXBERT_MODEL_DIR, else $SM_MODEL_DIR, else /opt/ml/model.
- Address: 0.0.0.0 ($FLAXBERT_HOST) on port $SAGEMAKER_BIND_TO_PORT (set by SageMaker when
  several containers share a host), else $FLAXBERT_PORT, else 8080.
- Settings: the FLAXBERT_* variables of ENV_OPTIONS and ENV_SWITCHES below, each the
  `flaxbert serve` option it names; options given on the command line win over them.

A missing model directory or an unreadable setting is one line (`flaxbert: error: ...`) and
exit status 2, as any flaxbert command.
"""

from __future__ import annotations

import os
import shlex
import sys
import textwrap

from flaxbert import cli
from flaxbert.errors import FlaxbertError

DEFAULT_MODEL_DIR = "/opt/ml/model"   # where SageMaker unpacks model.tar.gz
MODEL_DIR_VARIABLES = ("FLAXBERT_MODEL_DIR", "SM_MODEL_DIR")
PORT_VARIABLES = ("SAGEMAKER_BIND_TO_PORT", "FLAXBERT_PORT")
DEFAULT_HOST = "0.0.0.0"   # the container's port is published by docker; localhost would not be
DEFAULT_PORT = 8080        # SageMaker sends /ping and /invocations there

# Environment variable -> (`flaxbert serve` option, type of its value).
ENV_OPTIONS = {
    "FLAXBERT_MAX_BATCH_SIZE": ("--max-batch-size", int),
    "FLAXBERT_MAX_WAIT_MS": ("--max-wait-ms", float),
    "FLAXBERT_MAX_QUEUE": ("--max-queue", int),
    "FLAXBERT_MAX_INPUTS": ("--max-inputs", int),
    "FLAXBERT_MAX_CHARS": ("--max-chars", int),
    "FLAXBERT_MAX_BODY_BYTES": ("--max-body-bytes", int),
    "FLAXBERT_MAX_LENGTH": ("--max-length", int),
    "FLAXBERT_TOP_K": ("--top-k", int),
    "FLAXBERT_BACKEND": ("--backend", str),
}
# Environment variable -> `flaxbert serve` switch, on for 1/true/yes, off for 0/false/no/empty.
ENV_SWITCHES = {
    "FLAXBERT_REJECT_LONG": "--reject-long",
    "FLAXBERT_INT8": "--int8",
}
# SageMaker's model-server variables that this server has no use for, and why: said in the log
# when set, so that a setting made for another server is not silently taken as applied.
UNUSED_VARIABLES = {
    "SAGEMAKER_MODEL_SERVER_WORKERS": "one process serves, its one model thread batching the "
                                      "requests of every connection",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT": "requests are not timed out by the server",
}
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")

USAGE = """usage: serve [serve] [MODEL_DIR] [flaxbert serve options...]

Serves MODEL_DIR (a bundle, HF BERT checkpoint or `flaxbert export --serving` directory) with
`flaxbert serve` on 0.0.0.0:8080, as SageMaker runs a container: `docker run IMAGE serve`.
MODEL_DIR: argument, else $FLAXBERT_MODEL_DIR, else $SM_MODEL_DIR, else /opt/ml/model.
Port: $SAGEMAKER_BIND_TO_PORT, else $FLAXBERT_PORT, else 8080. Host: $FLAXBERT_HOST.
Settings (each the `flaxbert serve` option of the same name; `flaxbert serve --help`):
{settings}"""


def model_dir(argument: str | None, environ) -> str:
  """The model directory the server is to load, checked to exist: SageMaker's failure to mount
  a model (or a mistyped variable) is said with where the path came from."""
  source, path = "the default", DEFAULT_MODEL_DIR
  if argument is not None:
    source, path = "the argument", argument
  else:
    for name in MODEL_DIR_VARIABLES:
      if environ.get(name):
        source, path = name, environ[name]
        break
  if not os.path.isdir(path):
    reason = "is not a directory" if os.path.exists(path) else "does not exist"
    raise FlaxbertError(f"model directory {path} (from {source}) {reason}: mount the model "
                        f"at {DEFAULT_MODEL_DIR} or name it with FLAXBERT_MODEL_DIR, "
                        "SM_MODEL_DIR or `serve DIR`")
  return path


def port(environ) -> int:
  for name in PORT_VARIABLES:
    if environ.get(name):
      value = _number(name, environ[name], int)
      if not 1 <= value <= 65535:
        raise FlaxbertError(f"{name}={environ[name]!r} is not a TCP port (1-65535)")
      return value
  return DEFAULT_PORT


def env_options(environ) -> list[str]:
  """The `flaxbert serve` options the environment sets, in ENV_OPTIONS/ENV_SWITCHES order."""
  options = []
  for name, (option, kind) in ENV_OPTIONS.items():
    if environ.get(name, "").strip():
      options += [option, str(_number(name, environ[name], kind))]
  for name, switch in ENV_SWITCHES.items():
    word = environ.get(name, "").strip().lower()
    if word in TRUE_WORDS:
      options.append(switch)
    elif word not in FALSE_WORDS:
      raise FlaxbertError(f"{name}={environ[name]!r}: use 1/true/yes or 0/false/no")
  return options


def unused_settings(environ) -> list[str]:
  """A note per SageMaker variable set that the server does not use."""
  return [f"{name}={environ[name]} is not used: {why}"
          for name, why in UNUSED_VARIABLES.items() if environ.get(name)]


def _number(name: str, text: str, kind: type):
  try:
    return kind(text.strip())
  except ValueError:
    what = "a whole number" if kind is int else "a number"
    raise FlaxbertError(f"{name}={text!r} is not {what}") from None


def serve_argv(argv: list[str], environ) -> list[str]:
  """The `flaxbert` command line (`serve DIR --host ... --port ...`) that `serve argv` runs."""
  if argv[:1] == ["serve"]:
    argv = argv[1:]
  argument = argv[0] if argv and not argv[0].startswith("-") else None
  passed_on = argv[1:] if argument is not None else argv
  return ["serve", model_dir(argument, environ),
          "--host", environ.get("FLAXBERT_HOST") or DEFAULT_HOST,
          "--port", str(port(environ)), *env_options(environ), *passed_on]


def main(argv: list[str] | None = None) -> None:
  """The console script: runs `flaxbert serve` as SageMaker's contract says; ends the process."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(arg in ("-h", "--help") for arg in argv):
    settings = textwrap.fill(", ".join([*ENV_OPTIONS, *ENV_SWITCHES]), 92, initial_indent="  ",
                             subsequent_indent="  ")
    print(USAGE.format(settings=settings))
    sys.exit(0)
  try:
    command = serve_argv(argv, os.environ)
  except FlaxbertError as e:
    print(f"flaxbert: error: {e}", file=sys.stderr, flush=True)
    sys.exit(cli.EXIT_USER_ERROR)
  # The settings as the server gets them, first in the container's log (CloudWatch's); on
  # stdout, so that stderr holds the one line of a failure alone.
  print(f"serve: flaxbert {shlex.join(command)}", flush=True)
  for note in unused_settings(os.environ):
    print(f"serve: note: {note}", flush=True)
  cli.entry(command)


if __name__ == "__main__":
  main()
