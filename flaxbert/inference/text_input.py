"""Reading the plain-text inputs of `embed`/`predict`: one text, or two tab-separated texts,
per line. Errors name the file and line."""

from __future__ import annotations

import os

from flaxbert.errors import FlaxbertError


def read_text_lines(path: str) -> list[tuple[str, str | None]]:
  """(text_a, text_b or None) per line, in file order."""
  if not os.path.isfile(path):
    raise FlaxbertError(f"{path}: no such input file")
  rows: list[tuple[str, str | None]] = []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError as e:
        raise FlaxbertError(f"{path}:{number}: not UTF-8 text (byte {e.start})") from None
      fields = line.split("\t")
      if len(fields) > 2:
        raise FlaxbertError(f"{path}:{number}: {len(fields)} tab-separated fields; expected one "
                            "text or two (a pair)")
      rows.append((fields[0], fields[1] if len(fields) == 2 else None))
  if not rows:
    raise FlaxbertError(f"{path}: input file is empty")
  return rows
