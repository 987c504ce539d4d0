"""Contextual word vectors from a BERT bundle: one vector per whitespace-separated word of a
text, the mean of the last layer's states of the word's sub-tokens (the usual way to set a
BERT's words beside static word vectors: one word in two contexts gets two vectors).

Sub-tokens are matched to words by the tokenizer's character offsets, so punctuation split
off a word ("river." -> river, .) stays part of that word's vector.
"""

from __future__ import annotations

import re

import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert.inference import bucketing
from flaxbert.inference.embed import bert_bundle, check_settings, embed_rows


def word_spans(text: str) -> list[tuple[str, int, int]]:
  return [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def _row(tokenizer, text: str, max_length: int, number: int):
  """The model inputs of `text` and, per word, the positions of its sub-tokens."""
  ids, offsets = tokenizer.encode_with_offsets(text)
  if len(ids) > max_length - 2:
    raise FlaxbertError(f"text {number}: {len(ids)} tokens, more than --max-length "
                        f"{max_length} leaves ({max_length - 2}); every word needs a vector, "
                        "so it is not cut: raise --max-length or split the text")
  words, positions = [], []
  for word, start, end in word_spans(text):
    inside = [i + 1 for i, (s, e) in enumerate(offsets) if start <= s < end and e > s]
    if not inside:   # a word the tokenizer drops entirely (control characters)
      continue
    words.append(word)
    positions.append(inside)
  input_ids, segment_ids = tokenizer.build_inputs(ids)
  row = {"input_ids": np.asarray(input_ids, np.int32),
         "segment_ids": np.asarray(segment_ids, np.int32),
         "input_mask": np.ones(len(input_ids), np.int32)}
  return row, words, positions


def word_vectors(bundle, texts, *, max_length: int | None = None, batch_size: int = 32,
                 show_progress: bool = False) -> list[tuple[list[str], np.ndarray]]:
  """Per text: its words and their vectors (words x H, float32)."""
  bundle = bert_bundle(bundle, "embed --words")
  max_length = check_settings(bundle, max_length, batch_size)
  texts = [texts] if isinstance(texts, str) else list(texts)
  if not texts:
    return []
  made = [_row(bundle.tokenizer, t, max_length, n) for n, t in enumerate(texts, 1)]
  out = embed_rows(bundle, [r for r, _, _ in made], batch_size,
                   bucketing.default_buckets(max_length), show_progress)
  result = []
  for hidden, (_, words, positions) in zip(out["hidden"], made):
    hidden = np.asarray(hidden, np.float32)
    vectors = np.stack([hidden[p].mean(0) for p in positions]) if words else \
        np.zeros((0, hidden.shape[-1]), np.float32)
    result.append((words, vectors))
  return result
