"""Fine-tuning examples from raw files: sentence (pair) classification, word tagging, SQuAD
windows and parallel text, tokenized and unpadded (the pipeline pads them).

Generators yield `(key, example)` as the TFDS builders need; keys are `<file>:<line>` (or
the question id for SQuAD), so an example is traceable to its source line.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from flaxbert.data import readers
from flaxbert.data.tokenizer import Tokenizer
from flaxbert.errors import FlaxbertError

_CHUNK = 2048   # rows tokenized per encode_batch call


def _chunks(rows: Iterator, size: int = _CHUNK) -> Iterator[list]:
  chunk = []
  for row in rows:
    chunk.append(row)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


# --- sentence (pair) classification ---------------------------------------------------------

def collect_labels(paths: Sequence[str]) -> list[str]:
  """Sorted label names found in the last column of TSV files."""
  return sorted({fields[-1].strip() for path in paths
                 for _, fields in readers.read_tsv(path, (2, 3))})


def classification_examples(tokenizer: Tokenizer, paths: Sequence[str], max_seq_length: int,
                            labels: Sequence[str] | None, skips: readers.SkipCounter,
                            unlabeled: Sequence[str] = ()):
  """`labels=None` means regression: the label column must be a number. Files in
  `unlabeled` (a distillation's transfer set) hold texts without a label column (a sentence,
  or sentence1<TAB>sentence2, per line): their label is -1, "none" (ClassLabel's), or NaN
  for regression, where -1 is a value like any other."""
  label_index = {name: i for i, name in enumerate(labels)} if labels is not None else None
  for path in paths:
    labelled = path not in unlabeled
    for chunk in _chunks(readers.read_tsv(path, (2, 3) if labelled else (1, 2))):
      if labelled:
        targets = [_parse_label(path, number, fields[-1], label_index)
                   for number, fields in chunk]
      else:
        targets = [-1 if label_index is not None else np.float32("nan")] * len(chunk)
      pairs = len(chunk[0][1]) == (3 if labelled else 2)
      rows = tokenizer.encode_inputs(
          [(fields[0], fields[1] if pairs else None) for _, fields in chunk], max_seq_length,
          on_cut=lambda i: skips.skip("rows cut to max_seq_length", f"{path}:{chunk[i][0]}"))
      for (number, _), row, target in zip(chunk, rows, targets):
        yield f"{path}:{number}", {"input_ids": row["input_ids"],
                                   "segment_ids": row["segment_ids"], "label": target}


def _parse_label(path, number, text, label_index):
  text = text.strip()
  if label_index is None:
    try:
      return np.float32(text)
    except ValueError:
      raise FlaxbertError(f"{path}:{number}: label {text!r} is not a number") from None
  if text not in label_index:
    raise FlaxbertError(f"{path}:{number}: unknown label {text!r} (known: "
                        f"{', '.join(label_index)})")
  return label_index[text]


# --- word tagging (NER) ---------------------------------------------------------------------

def collect_tags(paths: Sequence[str]) -> list[str]:
  """Sorted tag names, with "O" first when present (so label 0 means "outside")."""
  tags = {tag for path in paths for _, _, sentence_tags in readers.read_conll(path)
          for tag in sentence_tags}
  return sorted(tags, key=lambda t: (t != "O", t))


def tagging_examples(tokenizer: Tokenizer, paths: Sequence[str], max_seq_length: int,
                     labels: Sequence[str], skips: readers.SkipCounter,
                     unlabeled: Sequence[str] = ()):
  """`labels` carries the tag of each word on its first sub-token and -1 on other sub-tokens
  and on [CLS]/[SEP]. Words that do not fit are cut and counted; `num_words` keeps the full
  word count so evaluation can score cut words as missed.

  Files in `unlabeled` (a distillation's transfer set) hold raw text, a sentence per line,
  words split at whitespace: their labels are all -1. With such files every example also
  has `kd_token_mask`, 1 on each word's first sub-token: the positions where the student
  learns the teacher's tags, labelled or not."""
  tag_index = {name: i for i, name in enumerate(labels)}
  for path in paths:
    labelled = path not in unlabeled
    for number, words, tags in (readers.read_conll(path) if labelled
                                else _raw_sentences(path)):
      if labelled:
        for offset, tag in enumerate(tags):
          if tag not in tag_index:
            raise FlaxbertError(f"{path}:{number + offset}: unknown tag {tag!r}")
        tags = [tag_index[tag] for tag in tags]
      else:
        tags = [-1] * len(words)
      ids: list[int] = []
      word_labels: list[int] = []
      firsts: list[int] = []
      for word, tag, pieces in zip(words, tags, tokenizer.encode_batch(words)):
        pieces = pieces or [tokenizer.unk_id]   # keep every word visible to the tagger
        ids += pieces
        word_labels += [tag] + [-1] * (len(pieces) - 1)
        firsts += [1] + [0] * (len(pieces) - 1)
      budget = max_seq_length - 2
      if len(ids) > budget:
        skips.skip("sentences cut to max_seq_length (trailing words lost)", f"{path}:{number}")
        ids, word_labels, firsts = ids[:budget], word_labels[:budget], firsts[:budget]
      ids = [tokenizer.cls_id] + ids + [tokenizer.sep_id]
      example = {"input_ids": np.asarray(ids, np.int32),
                 "labels": np.asarray([-1] + word_labels + [-1], np.int32),
                 "num_words": len(words)}
      if unlabeled:
        example["kd_token_mask"] = np.asarray([0] + firsts + [0], np.int32)
      yield f"{path}:{number}", example


def _raw_sentences(path: str):
  """(line number, words, None) per non-blank line of a raw text file."""
  for number, line in readers.read_lines(path):
    words = line.split()
    if words:
      yield number, words, None


# --- SQuAD ----------------------------------------------------------------------------------

def squad_examples(tokenizer: Tokenizer, questions: list[dict], max_seq_length: int,
                   doc_stride: int, max_query_length: int, key_prefix: str = "",
                   unlabeled: bool = False):
  """Windows of `[CLS] question [SEP] context-span [SEP]` over each context, as BERT's
  run_squad: a window that does not contain the answer points at [CLS] (position 0).

  `token_char_start/end` give each context token's character span in the context (-1 on
  question and special tokens), so the text of a predicted (start, end) is
  `context[char_start[start]:char_end[end]]`. `token_is_max_context` marks the window where
  a token has the most context on both sides (BERT's rule for overlapping windows).

  `unlabeled` (a distillation's transfer set): every window's start and end are -1, no
  answer to learn, whatever answers the questions list; the teacher's spans are learned.
  """
  context, tok_ids, spans_of = None, [], []
  for question in questions:
    if question["context"] != context:   # questions of a paragraph share its tokens
      context = question["context"]
      tok_ids, spans_of = tokenizer.encode_with_offsets(context)
    query = tokenizer.encode(question["question"])[:max_query_length]
    answer_tokens = None
    if question["answers"] and tok_ids and not unlabeled:
      answer = question["answers"][0]
      begin, end = answer["answer_start"], answer["answer_start"] + len(answer["text"])
      inside = [i for i, (s, e) in enumerate(spans_of) if s < end and e > begin]
      if inside:
        answer_tokens = (inside[0], inside[-1])
    doc_budget = max_seq_length - len(query) - 3
    if doc_budget < 1:
      raise FlaxbertError(f"max_seq_length {max_seq_length} leaves no room for the context "
                          f"after a {len(query)}-token question")
    windows = []
    span_start = 0
    while True:
      length = min(len(tok_ids) - span_start, doc_budget)
      windows.append((span_start, length))
      if span_start + length >= len(tok_ids):
        break
      span_start += min(length, doc_stride)
    for window, (span_start, length) in enumerate(windows):
      ids = [tokenizer.cls_id] + query + [tokenizer.sep_id]
      offset = len(ids)
      ids += tok_ids[span_start:span_start + length] + [tokenizer.sep_id]
      segments = [0] * offset + [1] * (length + 1)
      char_start = [-1] * len(ids)
      char_end = [-1] * len(ids)
      max_context = [0] * len(ids)
      for i in range(length):
        char_start[offset + i], char_end[offset + i] = spans_of[span_start + i]
        max_context[offset + i] = int(_is_max_context(windows, window, span_start + i))
      start_position = end_position = -1 if unlabeled else 0
      if answer_tokens and span_start <= answer_tokens[0] and \
          answer_tokens[1] < span_start + length:
        start_position = answer_tokens[0] - span_start + offset
        end_position = answer_tokens[1] - span_start + offset
      yield f"{key_prefix}:{question['id']}:{window}", {
          "input_ids": np.asarray(ids, np.int32), "segment_ids": np.asarray(segments, np.int32),
          "start_position": start_position, "end_position": end_position,
          "example_id": question["id"],
          "token_char_start": np.asarray(char_start, np.int32),
          "token_char_end": np.asarray(char_end, np.int32),
          "token_is_max_context": np.asarray(max_context, np.int32)}


def _is_max_context(spans, window, position) -> bool:
  """BERT's rule: the window where min(left context, right context) + 0.01 * length is best."""
  best_score, best_window = None, None
  for index, (start, length) in enumerate(spans):
    end = start + length - 1
    if start <= position <= end:
      score = min(position - start, end - position) + 0.01 * length
      if best_score is None or score > best_score:
        best_score, best_window = score, index
  return best_window == window


# --- parallel text --------------------------------------------------------------------------

def parallel_examples(tokenizer: Tokenizer, paths: Sequence[str], max_source_length: int,
                      max_target_length: int, skips: readers.SkipCounter):
  """Source and target ids, each cut to its length minus one and ended with [SEP] (EOS)."""
  eos = tokenizer.sep_id
  for path in paths:
    for chunk in _chunks(readers.read_tsv(path, (2,))):
      sources = tokenizer.encode_batch([fields[0] for _, fields in chunk])
      targets = tokenizer.encode_batch([fields[1] for _, fields in chunk])
      for (number, _), src, tgt in zip(chunk, sources, targets):
        if len(src) >= max_source_length or len(tgt) >= max_target_length:
          skips.skip("pairs cut to the maximum lengths", f"{path}:{number}")
        yield f"{path}:{number}", {
            "source_ids": np.asarray(src[:max_source_length - 1] + [eos], np.int32),
            "target_ids": np.asarray(tgt[:max_target_length - 1] + [eos], np.int32)}
