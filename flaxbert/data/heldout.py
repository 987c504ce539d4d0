"""Splitting a BERT-format corpus into training and held-out documents, streaming.

Every `every`-th document (up to `max_heldout`) goes to the held-out file, the rest to the
training file, so evaluation never sees text the model trained on. The split is cached next to
a stamp of the sources (paths, sizes, modification times) and redone only when they change.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterator, Sequence

from flaxbert.errors import FlaxbertError


def _documents(paths: Sequence[str]) -> Iterator[list[str]]:
  for path in paths:
    if not os.path.isfile(path):
      raise FlaxbertError(f"{path}: no such corpus file")
    doc: list[str] = []
    with open(path, "rb") as f:
      for number, raw in enumerate(f, start=1):
        if raw.strip():
          try:
            doc.append(raw.decode("utf-8").rstrip("\r\n"))
          except UnicodeDecodeError as e:
            raise FlaxbertError(f"{path}:{number}: not UTF-8 (byte {raw[e.start]:#04x} at "
                                f"column {e.start + 1})") from None
        elif doc:
          yield doc
          doc = []
    if doc:
      yield doc


def _stamp(paths: Sequence[str], every: int, max_heldout: int) -> str:
  digest = hashlib.sha256(f"{every}:{max_heldout}".encode())
  for path in paths:
    st = os.stat(path)
    digest.update(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
  return digest.hexdigest()[:16]


def split_heldout(paths: Sequence[str], out_dir: str, *, every: int = 50,
                  max_heldout: int = 200) -> tuple[str, str]:
  """(train file, held-out file) under out_dir."""
  for path in paths:
    if not os.path.isfile(path):
      raise FlaxbertError(f"{path}: no such corpus file")
  os.makedirs(out_dir, exist_ok=True)
  stamp = _stamp(paths, every, max_heldout)
  train_path = os.path.join(out_dir, f"train-{stamp}.txt")
  heldout_path = os.path.join(out_dir, f"heldout-{stamp}.txt")
  if os.path.exists(train_path) and os.path.exists(heldout_path):
    return train_path, heldout_path
  counts = {"train": 0, "heldout": 0}
  with open(train_path + ".tmp", "wb") as train, open(heldout_path + ".tmp", "wb") as heldout:
    for index, doc in enumerate(_documents(paths)):
      to_heldout = index % every == every - 1 and counts["heldout"] < max_heldout
      target, name = (heldout, "heldout") if to_heldout else (train, "train")
      if counts[name]:
        target.write(b"\n")
      target.write(("\n".join(doc) + "\n").encode("utf-8"))
      counts[name] += 1
  if counts["heldout"] < 2 or counts["train"] < 2:
    raise FlaxbertError(f"corpus {', '.join(paths)} has {counts['train'] + counts['heldout']} "
                        f"documents: too few to hold out every {every}th for evaluation "
                        "(give --eval-corpus, or more documents)")
  os.replace(train_path + ".tmp", train_path)
  os.replace(heldout_path + ".tmp", heldout_path)
  return train_path, heldout_path
