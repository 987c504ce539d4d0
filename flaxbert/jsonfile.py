"""Reading and writing the small JSON files flaxbert keeps (configs, manifests), with errors
that name the file and line instead of a decoder traceback."""

from __future__ import annotations

import json
import os
from typing import Any

from flaxbert.errors import FlaxbertError


def load_json(path: str) -> Any:
  """The JSON value in `path`, whatever its type (say sentence-transformers' modules.json,
  a list, or a SQuAD file); a missing file, non-UTF-8 bytes or malformed JSON are one-line
  errors naming the line."""
  if not os.path.isfile(path):
    raise FlaxbertError(f"{path}: no such file")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    raise FlaxbertError(f"{path}:{line}: not UTF-8 (byte {raw[e.start]:#04x})") from None
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise FlaxbertError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def read_json(path: str) -> dict[str, Any]:
  value = load_json(path)
  if not isinstance(value, dict):
    raise FlaxbertError(f"{path}: expected a JSON object")
  return value


def read_json_lines(path: str) -> list[tuple[int, dict[str, Any]]]:
  """(line number, object) of each line of a JSON Lines file (metrics.jsonl), blank lines
  skipped; a malformed line is a one-line error naming the file and line."""
  rows = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise FlaxbertError(f"{path}:{number}: malformed JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise FlaxbertError(f"{path}:{number}: expected a JSON object")
      rows.append((number, row))
  return rows


def write_json(path: str, obj: dict[str, Any]) -> None:
  """Writes atomically (temp file + rename) so a kill never leaves half a file."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)
