"""BERT pretraining examples: next-sentence pairs made once, masking made fresh every epoch.

Pairing follows Google's `create_pretraining_data.py` (segments filled up to the target
length, a shorter random target for 10% of sequences, 50% random next segment from another
document, the longer segment truncated one token at a time from a random end). Pairing is done once when the data are prepared. Masking is dynamic, as in
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

  def draw_target() -> int:
    # Drawn afresh for every pair, so 10% of sequences are short whatever the document
    # lengths (BERT's script draws once per document, which makes whole long documents short).
    return rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens

  target_length = draw_target()
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
      target_length = draw_target()
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


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finalizer: a bijection of uint64 that scatters every input bit."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def example_streams(seed: int, epochs: np.ndarray, indices: np.ndarray, length: int,
                    count: int) -> list[np.ndarray]:
  """`count` arrays of uint64 random words, [rows, length] each, one word per position.

  A counter-based generator (SplitMix64 keyed by seed, epoch and example index): the words of
  an example depend only on (seed, epoch, index, position), never on which batch, process or
  worker computes them, so masking is reproducible and a resumed run redraws the same masks.
  """
  with np.errstate(over="ignore"):
    key = _mix(np.uint64(seed % 2**64) * _GOLDEN + np.uint64(0x5851F42D4C957F2D))
    row = _mix(key + np.asarray(epochs, np.uint64) * _GOLDEN)
    row = _mix(row ^ (np.asarray(indices, np.uint64) * np.uint64(0xD1B54A32D192ED03)))
    counter = np.arange(1, length * count + 1, dtype=np.uint64) * _GOLDEN
    words = _mix(row[:, None] + counter[None, :])
  return [words[:, k * length:(k + 1) * length] for k in range(count)]


def _uniform(words: np.ndarray) -> np.ndarray:
  """Floats in [0, 1) from the top 53 bits."""
  return (words >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


class Masker:
  """Turns stored pairs (`input_ids` with [CLS]/[SEP], `nsp_label`) into padded, masked
  training examples, a whole batch at a time with numpy. Deterministic in (seed, epoch,
  index): the same example gets the same masks in any batch, process or worker.

  `word_start` is a bool per vocabulary id (True where the token begins a word); with
  `whole_word`, all pieces of a word are masked together, as in BERT's whole-word models.
  Selection follows BERT: candidates (words, or single tokens) in random order, each taken
  if it still fits the budget of round(0.15 * length) predictions, at most max_predictions.
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
    """One example (the fields without the batch axis)."""
    ids = np.asarray(input_ids, np.int32)
    batch = self.batch(ids, np.array([len(ids)]), np.array([nsp_label]), np.array([epoch]),
                       np.array([index]))
    return {key: value[0] for key, value in batch.items()}

  def batch(self, flat_ids: np.ndarray, lengths: np.ndarray, nsp_labels: np.ndarray,
            epochs: np.ndarray, indices: np.ndarray) -> dict[str, np.ndarray]:
    """A batch from its examples' ids concatenated (`flat_ids`) and their `lengths`."""
    S, P = self.seq_length, self.max_predictions
    lengths = np.asarray(lengths, np.int64)
    rows = len(lengths)
    if rows and lengths.max() > S:
      bad = int(np.argmax(lengths > S))
      raise FlaxbertError(f"stored example {int(indices[bad])} has {int(lengths[bad])} tokens, "
                          f"more than the sequence length {S}: prepare the data for this length")
    column = np.arange(S)
    real = column[None, :] < lengths[:, None]                       # [B, S]
    ids = np.full((rows, S), self.pad_id, np.int32)
    ids[real] = flat_ids
    choose_words, roll_words, token_words = example_streams(self.seed, epochs, indices, S, 3)
    chosen = self._choose(ids, real, lengths, choose_words)        # [B, S] bool

    masked = ids.copy()
    roll = _uniform(roll_words)
    masked[chosen & (roll < 0.8)] = self.mask_id                   # 80% [MASK]
    randomize = chosen & (roll >= 0.9)                             # 10% random, 10% unchanged
    draws = ((token_words[randomize] & np.uint64(0xFFFFFFFF)) * np.uint64(len(self._random_ids))
             ) >> np.uint64(32)
    masked[randomize] = self._random_ids[draws.astype(np.int64)]

    # Chosen positions in increasing order, packed to the left of [B, P].
    order = np.argsort(~chosen, axis=1, kind="stable")[:, :min(P, S)]
    count = chosen.sum(axis=1)
    valid = np.arange(order.shape[1])[None, :] < count[:, None]
    positions = np.zeros((rows, P), np.int32)
    positions[:, :order.shape[1]] = np.where(valid, order, 0)
    masked_ids = np.zeros((rows, P), np.int32)
    masked_ids[:, :order.shape[1]] = np.where(valid, np.take_along_axis(ids, order, 1), 0)
    weights = np.zeros((rows, P), np.float32)
    weights[:, :order.shape[1]] = valid

    first_sep = np.argmax(ids == self.sep_id, axis=1)             # text never encodes to [SEP]
    segment_ids = ((column[None, :] > first_sep[:, None]) & real).astype(np.int32)
    return {"input_ids": masked, "segment_ids": segment_ids, "input_mask": real.astype(np.int32),
            "masked_positions": positions, "masked_ids": masked_ids, "masked_weights": weights,
            "nsp_label": np.asarray(nsp_labels, np.int32)}

  def _choose(self, ids: np.ndarray, real: np.ndarray, lengths: np.ndarray,
              words: np.ndarray) -> np.ndarray:
    rows, S = ids.shape
    candidate = real & ~self._special[ids]
    budget = np.minimum(self.max_predictions,
                        np.maximum(1, np.round(lengths * self.mask_prob))).astype(np.int64)
    column = np.arange(S)
    if self.whole_word:
      # A group starts at a word start, or where the previous position was not a candidate
      # (right after [CLS]/[SEP]), so a word never spans a special token.
      previous = np.zeros_like(candidate)
      previous[:, 1:] = candidate[:, :-1]
      starts = candidate & (self._word_start[ids] | ~previous)
    else:
      starts = candidate
    # Each candidate's group is named by its start column; sizes are counted at the starts.
    start_of = np.maximum.accumulate(np.where(starts, column[None, :], 0), axis=1)
    flat_start = (np.arange(rows)[:, None] * S + start_of)[candidate]
    sizes = np.bincount(flat_start, minlength=rows * S).reshape(rows, S)
    # Groups in random order: sort the starts by their random word (non-starts last).
    keys = np.where(starts, words >> np.uint64(1), np.uint64(2**63))
    order = np.argsort(keys, axis=1)
    ordered_sizes = np.take_along_axis(np.where(starts, sizes, 0), order, 1)
    is_group = np.take_along_axis(starts, order, 1)
    # BERT's greedy pass: take each group that still fits. The longest prefix that fits is
    # taken at once; then, repeatedly, the first later group that fits the room left (a group
    # skipped before is too big for the room now, so this is the same as one greedy pass).
    taken = is_group & (np.cumsum(ordered_sizes, axis=1) <= budget[:, None])
    taken &= np.cumsum(~taken, axis=1) == 0          # a prefix: stop at the first overflow
    room = budget - (ordered_sizes * taken).sum(axis=1)
    while True:
      fits = is_group & ~taken & (ordered_sizes <= room[:, None]) & (ordered_sizes > 0)
      has = fits.any(axis=1)
      if not has.any():
        break
      first = np.argmax(fits, axis=1)
      picked = np.flatnonzero(has)
      taken[picked, first[picked]] = True
      room[picked] -= ordered_sizes[picked, first[picked]]
    chosen_starts = np.zeros_like(starts)
    np.put_along_axis(chosen_starts, order, taken, 1)
    return candidate & np.take_along_axis(chosen_starts, start_of, 1)
