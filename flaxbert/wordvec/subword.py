"""fastText's subword units: the character n-grams of `<word>` (3 to 6 characters by default),
each hashed with 32-bit FNV-1a (over the UTF-8 bytes, as fastText does) into one of `buckets`
rows, so that a word never seen in training still gets a vector from its pieces."""

from __future__ import annotations

import numpy as np

FNV_OFFSET = 2166136261
FNV_PRIME = 16777619


def fnv1a(text: str) -> int:
  h = FNV_OFFSET
  for byte in text.encode("utf-8"):
    # fastText hashes each byte as a sign-extended int8 (its `char` is signed).
    h ^= byte if byte < 128 else (byte - 256) & 0xFFFFFFFF
    h = (h * FNV_PRIME) & 0xFFFFFFFF
  return h


def char_ngrams(word: str, min_n: int = 3, max_n: int = 6) -> list[str]:
  """The n-grams of `<word>`, min_n <= n <= max_n (`<word>` itself too when short enough, as
  in fastText and gensim)."""
  marked = f"<{word}>"
  out = []
  for n in range(min_n, max_n + 1):
    for start in range(0, len(marked) - n + 1):
      out.append(marked[start:start + n])
  return out


def ngram_buckets(word: str, buckets: int, min_n: int = 3, max_n: int = 6) -> list[int]:
  return [fnv1a(g) % buckets for g in char_ngrams(word, min_n, max_n)]


def input_rows(words: list[str], buckets: int, min_n: int = 3, max_n: int = 6):
  """(rows, mask): per word, the rows of the input table its vector is the mean of: its own
  row (its index) and, with buckets > 0, len(words) + each n-gram's bucket; padded to the
  longest word's count, the padding masked out."""
  lists = [[i] + ([len(words) + b for b in ngram_buckets(w, buckets, min_n, max_n)]
                  if buckets else []) for i, w in enumerate(words)]
  width = max(len(r) for r in lists)
  rows = np.zeros((len(words), width), np.int32)
  mask = np.zeros((len(words), width), np.float32)
  for i, r in enumerate(lists):
    rows[i, :len(r)] = r
    mask[i, :len(r)] = 1.0
  return rows, mask
