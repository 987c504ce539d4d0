"""BERT pretraining examples: next-sentence pairs made once, masking made fresh every epoch.

Pairing follows Google's `create_pretraining_data.py` (segments filled up to the target
length, 10% shorter targets, 50% random next segment from another document, random-side
truncation). Pairing is done once when the data are prepared. Masking is dynamic, as in
RoBERTa: each (seed, epoch, example index) draws its own masks, so every epoch sees new masks
and a resumed run redraws exactly the masks it would have drawn.

`max_predictions_per_seq` defaults to ceil(0.15 * seq_length): 20 for 128 and 77 for 512.
Masking picks at most round(0.15 * n) positions of an n-token example, so a larger P (BERT's
80 for 512) would only add padding.
"""

from __future__ import annotations

import math
import random
from typing import Iterator, Sequence

import numpy as np

from flaxbert.errors import FlaxbertError

MASK_PROB = 0.15
SHORT_SEQ_PROB = 0.1


def default_max_predictions(seq_length: int, mask_prob: float = MASK_PROB) -> int:
  return math.ceil(mask_prob * seq_length)


def create_pairs(documents: Sequence[Sequence[np.ndarray]], seq_length: int, rng: random.Random,
                 short_seq_prob: float = SHORT_SEQ_PROB
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
  """(tokens_a, tokens_b, is_random_next) for every document, as BERT's reference does.

  `documents` are lists of tokenized sentences (int arrays without special tokens). The pair
  fits `seq_length` once `[CLS] A [SEP] B [SEP]` is added.
  """
  if len(documents) < 2:
    raise FlaxbertError("next-sentence prediction needs at least two documents (separate "
                        "documents with a blank line); the corpus has "
                        f"{len(documents)}")
  max_tokens = seq_length - 3
  if max_tokens < 2:
    raise FlaxbertError(f"sequence length {seq_length} is too short for a sentence pair")
  for doc_index, document in enumerate(documents):
    yield from _pairs_from_document(documents, doc_index, max_tokens, rng, short_seq_prob)


def _pairs_from_document(documents, doc_index, max_tokens, rng, short_seq_prob):
  document = documents[doc_index]
  target_length = max_tokens
  if rng.random() < short_seq_prob:
    target_length = rng.randint(2, max_tokens)
  chunk: list[np.ndarray] = []
  chunk_length = 0
  i = 0
  while i < len(document):
    chunk.append(document[i])
    chunk_length += len(document[i])
    if i == len(document) - 1 or chunk_length >= target_length:
      a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
      tokens_a = np.concatenate(chunk[:a_end])
      if len(chunk) == 1 or rng.random() < 0.5:
        is_random_next = 1
        # A different document, chosen uniformly (BERT retries 10 times; this never fails).
        other = rng.randrange(len(documents) - 1)
        other += other >= doc_index
        random_document = documents[other]
        start = rng.randrange(len(random_document))
        pieces, length = [], 0
        for sentence in random_document[start:]:
          pieces.append(sentence)
          length += len(sentence)
          if length >= target_length - len(tokens_a):
            break
        tokens_b = np.concatenate(pieces)
        i -= len(chunk) - a_end  # the segments not used for A go back into the document
      else:
        is_random_next = 0
        tokens_b = np.concatenate(chunk[a_end:])
      yield (*_truncate_pair(tokens_a, tokens_b, max_tokens, rng), is_random_next)
      chunk, chunk_length = [], 0
    i += 1


def _truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int, rng: random.Random):
  """Cuts the longer side one token at a time, from its front or back at random."""
  a_start, a_end, b_start, b_end = 0, len(a), 0, len(b)
  while (a_end - a_start) + (b_end - b_start) > max_tokens:
    if a_end - a_start > b_end - b_start:
      if rng.random() < 0.5:
        a_start += 1
      else:
        a_end -= 1
    elif rng.random() < 0.5:
      b_start += 1
    else:
      b_end -= 1
  return a[a_start:a_end], b[b_start:b_end]


class Masker:
  """Turns a stored pair (`input_ids` with [CLS]/[SEP], `nsp_label`) into a padded,
  masked training example. Deterministic in (seed, epoch, index).

  `word_start` is a bool per vocabulary id (True where the token begins a word); with
  `whole_word`, all pieces of a word are masked together, as in BERT's whole-word models.
  """

  def __init__(self, *, seq_length: int, vocab_size: int, pad_id: int, sep_id: int,
               mask_id: int, special_ids: Sequence[int], word_start: np.ndarray, seed: int,
               max_predictions: int | None = None, whole_word: bool = False,
               mask_prob: float = MASK_PROB):
    self.seq_length = seq_length
    self.max_predictions = max_predictions or default_max_predictions(seq_length, mask_prob)
    self.pad_id, self.sep_id, self.mask_id = pad_id, sep_id, mask_id
    self.seed, self.whole_word, self.mask_prob = seed, whole_word, mask_prob
    self._special = np.zeros(vocab_size, bool)
    self._special[list(special_ids)] = True
    self._word_start = np.asarray(word_start, bool)
    self._random_ids = np.flatnonzero(~self._special).astype(np.int32)

  def __call__(self, input_ids: np.ndarray, nsp_label: int, epoch: int, index: int) -> dict:
    ids = np.asarray(input_ids, np.int32)
    n = len(ids)
    if n > self.seq_length:
      raise FlaxbertError(f"stored example {index} has {n} tokens, more than the sequence "
                          f"length {self.seq_length}: prepare the data for this length")
    rng = np.random.default_rng((self.seed, epoch, index))
    positions = self._choose_positions(ids, rng)
    masked_ids = ids[positions]
    masked = ids.copy()
    roll = rng.random(len(positions))
    replace = roll < 0.8                          # 80% [MASK]
    randomize = roll >= 0.9                       # 10% a random token, 10% unchanged
    masked[positions[replace]] = self.mask_id
    masked[positions[randomize]] = self._random_ids[
        rng.integers(len(self._random_ids), size=int(randomize.sum()))]

    S, P = self.seq_length, self.max_predictions
    out_ids = np.full(S, self.pad_id, np.int32)
    out_ids[:n] = masked
    segment_ids = np.zeros(S, np.int32)
    first_sep = int(np.argmax(ids == self.sep_id))   # text never encodes to [SEP]
    segment_ids[first_sep + 1:n] = 1
    input_mask = np.zeros(S, np.int32)
    input_mask[:n] = 1
    out_positions = np.zeros(P, np.int32)
    out_positions[:len(positions)] = positions
    out_masked_ids = np.zeros(P, np.int32)
    out_masked_ids[:len(positions)] = masked_ids
    weights = np.zeros(P, np.float32)
    weights[:len(positions)] = 1.0
    return {"input_ids": out_ids, "segment_ids": segment_ids, "input_mask": input_mask,
            "masked_positions": out_positions, "masked_ids": out_masked_ids,
            "masked_weights": weights, "nsp_label": np.int32(nsp_label)}

  def _choose_positions(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    candidates = np.flatnonzero(~self._special[ids])
    if not len(candidates):
      return candidates.astype(np.int32)
    budget = min(self.max_predictions, max(1, round(len(ids) * self.mask_prob)))
    if self.whole_word:
      # A group starts at a word start, or where the previous position was not a candidate
      # (right after [CLS]/[SEP]), so a word never spans a special token.
      starts = self._word_start[ids[candidates]]
      starts[0] = True
      starts[1:] |= np.diff(candidates) > 1
      group_of = np.cumsum(starts) - 1
      bounds = np.append(np.flatnonzero(starts), len(candidates))
    else:
      group_of = np.arange(len(candidates))
      bounds = np.arange(len(candidates) + 1)
    sizes = np.diff(bounds)
    chosen = np.zeros(len(sizes), bool)
    count = 0
    for group in rng.permutation(len(sizes)):   # BERT: skip a word that would overflow
      if count + sizes[group] <= budget:
        chosen[group] = True
        count += sizes[group]
        if count == budget:
          break
    return candidates[chosen[group_of]].astype(np.int32)
