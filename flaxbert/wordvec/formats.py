"""Word-vector files: word2vec text (`V D` header, then `word v1 ... vD` per line; fastText's
`.vec` is the same), word2vec binary (the header line, then per word `word ` and D
little-endian float32, a newline after each), GloVe text (no header). `read_vectors` tells
them apart itself. subword.npz holds a --subword run's n-gram rows."""

from __future__ import annotations

import dataclasses

import numpy as np

from flaxbert.errors import FlaxbertError, os_error_line
from flaxbert.wordvec import subword

FORMATS = ("word2vec", "word2vec-binary", "glove")


@dataclasses.dataclass
class Vectors:
  words: list[str]
  matrix: np.ndarray                 # [V, D] float32
  ngrams: np.ndarray | None = None   # [buckets, D]: vectors for unseen words, if known
  min_n: int = 3
  max_n: int = 6

  def __post_init__(self):
    self.index = {w: i for i, w in enumerate(self.words)}

  def vector(self, word: str) -> np.ndarray | None:
    """The word's vector; an unseen word's from its n-grams when the file came with them."""
    i = self.index.get(word)
    if i is not None:
      return self.matrix[i]
    if self.ngrams is None:
      return None
    rows = subword.ngram_buckets(word, len(self.ngrams), self.min_n, self.max_n)
    return self.ngrams[rows].mean(0) if rows else None


def write_word2vec_text(path: str, words, matrix, header: bool = True) -> None:
  with open(path, "w", encoding="utf-8") as f:
    if header:
      f.write(f"{len(words)} {matrix.shape[1]}\n")
    for word, row in zip(words, matrix):
      f.write(word + " " + " ".join(f"{x:.6g}" for x in row) + "\n")


def write_glove(path: str, words, matrix) -> None:
  write_word2vec_text(path, words, matrix, header=False)


def write_word2vec_binary(path: str, words, matrix) -> None:
  with open(path, "wb") as f:
    f.write(f"{len(words)} {matrix.shape[1]}\n".encode())
    for word, row in zip(words, matrix):
      f.write(word.encode("utf-8") + b" " + np.asarray(row, "<f4").tobytes() + b"\n")


def write(path: str, vectors: Vectors, fmt: str) -> None:
  {"word2vec": write_word2vec_text, "glove": write_glove,
   "word2vec-binary": write_word2vec_binary}[fmt](path, vectors.words, vectors.matrix)


def write_subwords(path: str, ngrams, min_n: int, max_n: int) -> None:
  with open(path, "wb") as f:
    np.savez(f, ngrams=np.asarray(ngrams, np.float32), min_n=min_n, max_n=max_n)


def _header(line: bytes):
  parts = line.split()
  if len(parts) == 2 and all(p.isdigit() for p in parts):
    return int(parts[0]), int(parts[1])
  return None


def _read_binary(f, path, count, dim):
  words, matrix = [], np.empty((count, dim), np.float32)
  for i in range(count):
    word = bytearray()
    while True:
      c = f.read(1)
      if not c:
        raise FlaxbertError(f"{path}: ends after {i} of the {count} vectors its header "
                            "announces")
      if c == b" ":
        break
      if c != b"\n" or word:   # the newline after the previous vector
        word += c
    row = f.read(4 * dim)
    if len(row) != 4 * dim:
      raise FlaxbertError(f"{path}: ends inside the vector of {word.decode(errors='replace')!r}")
    words.append(word.decode("utf-8", errors="replace"))
    matrix[i] = np.frombuffer(row, "<f4")
  return words, matrix


def _read_text(lines, path, first_line_no, dim):
  words, rows = [], []
  for n, line in enumerate(lines, first_line_no):
    parts = line.rstrip("\n").rstrip(" ").split(" ")
    if len(parts) == 1 and not parts[0]:
      continue
    if dim is None:
      dim = len(parts) - 1
    if len(parts) != dim + 1:
      raise FlaxbertError(f"{path}:{n}: {len(parts) - 1} numbers after the word, expected {dim}")
    try:
      rows.append(np.array(parts[1:], np.float32))
    except ValueError:
      raise FlaxbertError(f"{path}:{n}: not a word followed by numbers") from None
    words.append(parts[0])
  if not words:
    raise FlaxbertError(f"{path}: holds no vectors")
  return words, np.stack(rows)


def read_vectors(path: str) -> Vectors:
  """word2vec text or binary, GloVe or fastText .vec, told apart by their first bytes; with
  a subword.npz beside the file (a --subword run's), unseen words get vectors too."""
  try:
    with open(path, "rb") as f:
      first = f.readline()
      header = _header(first)
      rest_start = f.tell()
      probe = f.read(4096)
      binary = header is not None and b"\0" in probe or _not_utf8(probe)
      if header is not None and binary:
        f.seek(rest_start)
        words, matrix = _read_binary(f, path, *header)
      else:
        f.seek(0)
        text = f.read().decode("utf-8")
        lines = text.splitlines(keepends=True)
        if header is not None:
          words, matrix = _read_text(lines[1:], path, 2, header[1])
          if len(words) != header[0]:
            raise FlaxbertError(f"{path}: holds {len(words)} vectors, its header says "
                                f"{header[0]}")
        else:
          words, matrix = _read_text(lines, path, 1, None)
  except OSError as e:
    raise FlaxbertError(os_error_line(e, path)) from None
  except UnicodeDecodeError:
    raise FlaxbertError(f"{path}: neither word-vector text (UTF-8) nor word2vec binary with a "
                        "`COUNT DIM` header") from None
  vectors = Vectors(words, matrix)
  side = path.rsplit("/", 1)[0] + "/subword.npz" if "/" in path else "subword.npz"
  try:
    with np.load(side) as saved:
      if saved["ngrams"].shape[1] == matrix.shape[1]:   # the run's, not another file's
        vectors.ngrams = saved["ngrams"]
        vectors.min_n, vectors.max_n = int(saved["min_n"]), int(saved["max_n"])
  except FileNotFoundError:
    pass
  return vectors


def _not_utf8(data: bytes) -> bool:
  try:
    data.decode("utf-8")
    return False
  except UnicodeDecodeError as e:
    return e.start < len(data) - 4   # a character cut by the probe's end is still text
