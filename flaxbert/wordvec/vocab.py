"""A corpus read once: its vocabulary (words of at least min_count occurrences, most frequent
first), the corpus as token ids with sentence boundaries, and word2vec's two sampling
distributions: the keep probability of frequent-word subsampling and the unigram^0.75 table
negatives are drawn from."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from flaxbert.errors import FlaxbertError, os_error_line

NEGATIVE_TABLE_SIZE = 10_000_000   # word2vec's table has 1e8 entries; 1e7 keeps 1/1000 of a
                                   # count-1 word's share out of 0.75-smoothed mass just as well


@dataclasses.dataclass
class Corpus:
  words: list[str]          # vocabulary, by count descending (ties: alphabetical)
  counts: np.ndarray        # int64 per word
  tokens: np.ndarray        # int32 ids of the in-vocabulary words, in corpus order
  sentences: np.ndarray     # int32 sentence number of each token
  raw_words: int            # words in the corpus, out-of-vocabulary ones included

  @property
  def index(self) -> dict[str, int]:
    return {w: i for i, w in enumerate(self.words)}


def read_sentences(paths: list[str]):
  """Lines of the files, whitespace-split (word2vec's tokenisation; no case folding)."""
  for path in paths:
    try:
      with open(path, encoding="utf-8") as f:
        for line in f:
          words = line.split()
          if words:
            yield words
    except OSError as e:
      raise FlaxbertError(os_error_line(e, path)) from None
    except UnicodeDecodeError as e:
      raise FlaxbertError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_corpus(paths: list[str], min_count: int) -> Corpus:
  sentences = list(read_sentences(paths))
  counter = collections.Counter(w for s in sentences for w in s)
  kept = sorted((w for w, c in counter.items() if c >= min_count),
                key=lambda w: (-counter[w], w))
  if not kept:
    raise FlaxbertError(f"{', '.join(paths)}: no word occurs --min-count {min_count} times "
                        f"({sum(counter.values())} words in all)")
  index = {w: i for i, w in enumerate(kept)}
  ids, sent = [], []
  for n, s in enumerate(sentences):
    row = [index[w] for w in s if w in index]
    ids.extend(row)
    sent.extend([n] * len(row))
  return Corpus(kept, np.array([counter[w] for w in kept], np.int64),
                np.array(ids, np.int32), np.array(sent, np.int32),
                sum(counter.values()))


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
  """word2vec's (and gensim's) subsampling: a word of count c is kept with probability
  (sqrt(c / t) + 1) * t / c, t = sample * (tokens in vocabulary), capped at 1."""
  if sample <= 0:
    return np.ones(len(counts), np.float32)
  t = sample * counts.sum()
  return np.minimum((np.sqrt(counts / t) + 1) * t / counts, 1.0).astype(np.float32)


def negative_table(counts: np.ndarray, power: float = 0.75,
                   size: int = NEGATIVE_TABLE_SIZE) -> np.ndarray:
  """word ids laid out in proportion to count**power: a uniform index into it is a negative."""
  weights = counts.astype(np.float64) ** power
  edges = np.round(np.cumsum(weights) / weights.sum() * size).astype(np.int64)
  return np.repeat(np.arange(len(counts), dtype=np.int32), np.diff(edges, prepend=0))
