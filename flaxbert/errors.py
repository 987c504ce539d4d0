"""The one exception type that reaches users as a one-line message.

Library code raises `FlaxbertError` for bad input (missing files, malformed data, shapes that
disagree with a config, impossible settings). The `flaxbert` command catches it, prints
`flaxbert: error: <message>` and exits non-zero, so users never see a traceback for their own
mistakes. Anything else escaping is a bug in flaxbert and keeps its traceback.
"""


class FlaxbertError(Exception):
  """A user-facing error: the message alone must say what is wrong and where."""


def os_error_line(error: "OSError | str", path: str) -> str:
  """`PATH: reason` for an operating-system failure (full disk, read-only, permissions)."""
  if isinstance(error, OSError):
    return f"{error.filename or path}: {error.strerror or error}"
  return f"{path}: {error}"
