"""Reading and writing the small JSON files flaxbert keeps (configs, manifests), with errors
that name the file and line instead of a decoder traceback."""

from __future__ import annotations

import json
import os
from typing import Any

from flaxbert.errors import FlaxbertError


def read_json(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    raise FlaxbertError(f"{path}: no such file")
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except json.JSONDecodeError as e:
    raise FlaxbertError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
  except UnicodeDecodeError:
    raise FlaxbertError(f"{path}: not UTF-8 text") from None
  if not isinstance(value, dict):
    raise FlaxbertError(f"{path}: expected a JSON object")
  return value


def write_json(path: str, obj: dict[str, Any]) -> None:
  """Writes atomically (temp file + rename) so a kill never leaves half a file."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)
