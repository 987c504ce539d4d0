"""One epoch's training examples, made on the host with numpy from a seeded generator (the
same epoch and seed give the same examples, which is what makes a resumed run exact):

- subsampling: each token is kept with its word's keep probability, before windows are cut
  (as word2vec does, so windows reach past the dropped frequent words);
- dynamic windows: each kept token draws its window b uniformly from 1..window, so near
  neighbours are seen more often than far ones; windows stop at sentence ends;
- skip-gram: a (context word, centre word) pair per neighbour in the window;
  CBOW: a centre word with its neighbours (a row of 2*window, -1 where there are none);
- the examples come in corpus order: train.py deals them out to the batches in turn, so that
  a large batch holds windows from all over the corpus, never neighbouring ones.
"""

from __future__ import annotations

import numpy as np


def subsample(tokens, sentences, keep, rng):
  kept = rng.random(len(tokens), dtype=np.float32) < keep[tokens]
  return tokens[kept], sentences[kept]


def skipgram_pairs(tokens, sentences, window: int, rng):
  """(inputs, outputs): the word whose (input) vector predicts, and the word predicted."""
  b = rng.integers(1, window + 1, len(tokens))
  inputs, outputs = [], []
  for d in range(1, window + 1):
    same = (sentences[d:] == sentences[:-d])
    left = same & (b[d:] >= d)     # token i+d, centre, sees i
    right = same & (b[:-d] >= d)   # token i, centre, sees i+d
    inputs += [tokens[:-d][left], tokens[d:][right]]
    outputs += [tokens[d:][left], tokens[:-d][right]]
  return np.concatenate(inputs), np.concatenate(outputs)


def cbow_windows(tokens, sentences, window: int, rng):
  """(contexts [n, 2*window] with -1 for no word, centres [n]); centres without any context
  are left out."""
  n = len(tokens)
  b = rng.integers(1, window + 1, n)
  contexts = np.full((n, 2 * window), -1, np.int32)
  for d in range(1, window + 1):
    same = (sentences[d:] == sentences[:-d])
    right = same & (b[:-d] >= d)
    contexts[:-d, d - 1] = np.where(right, tokens[d:], -1)
    left = same & (b[d:] >= d)
    contexts[d:, window + d - 1] = np.where(left, tokens[:-d], -1)
  has = (contexts >= 0).any(axis=1)
  return contexts[has], tokens[has]


def epoch_examples(model: str, tokens, sentences, keep, window: int, seed: int, epoch: int):
  """(inputs, outputs) of an epoch: inputs [n, k] word ids (-1: none), outputs [n]."""
  rng = np.random.default_rng([seed, epoch])
  tokens, sentences = subsample(tokens, sentences, keep, rng)
  if model == "skipgram":
    inputs, outputs = skipgram_pairs(tokens, sentences, window, rng)
    return inputs[:, None], outputs
  return cbow_windows(tokens, sentences, window, rng)
