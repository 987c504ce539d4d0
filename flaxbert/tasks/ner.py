"""Word tagging (NER): CoNLL I/O, word -> sub-token encoding, entity-level seqeval scores,
entity spans.

A word's tag is predicted at its first sub-token (as in training, where the other sub-tokens
carry label -1), with the softmax probability of that tag there. Words cut by max_seq_length
are predicted "O" (and so count as missed).

Entity spans (`entity_spans`, written beside the CoNLL predictions as `<output>.spans.jsonl`)
are seqeval's entities of the predicted tags (the conlleval rules scoring uses): type, text,
character `start`/`end` (end exclusive) into the sentence text, which for a CoNLL file is its
words joined by single spaces, and `score`: the mean over the entity's words of the predicted
tag's probability.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from scipy import special
from seqeval import metrics
from seqeval.metrics.sequence_labeling import get_entities

from flaxbert.data import readers
from flaxbert.errors import FlaxbertError


class Sentence:
  def __init__(self, number: int, lines: list[str], words: list[str], tags: list[str] | None):
    self.number, self.lines, self.words, self.tags = number, lines, words, tags


def read_conll(path: str, *, need_tags: bool) -> list[Sentence]:
  """Sentences of a CoNLL file, keeping each line's text (for writing predictions beside it).

  The first column is the token and (with `need_tags`) the last the tag; a line without a
  tag is an error naming its line.
  """
  sentences: list[Sentence] = []
  lines: list[str] = []
  words: list[str] = []
  tags: list[str] = []
  start = 0

  def flush():
    if words:
      sentences.append(Sentence(start, list(lines), list(words),
                                list(tags) if need_tags else None))

  for number, line in readers._lines(path):
    if not line.strip():
      flush()
      lines, words, tags = [], [], []
      continue
    fields = line.split("\t") if "\t" in line else line.split()
    if fields[0] == "-DOCSTART-":
      continue
    if need_tags and len(fields) < 2:
      raise FlaxbertError(f"{path}:{number}: expected 'token<TAB>tag', found {line[:60]!r}")
    if not words:
      start = number
    lines.append(line)
    words.append(fields[0])
    tags.append(fields[-1])
  flush()
  return sentences


def encode_words(tokenizer, words: Sequence[str], max_seq_length: int
                 ) -> tuple[list[int], list[int]]:
  """([CLS] sub-tokens [SEP], position of each kept word's first sub-token), as training."""
  ids: list[int] = []
  first: list[int] = []
  budget = max_seq_length - 2
  for pieces in tokenizer.encode_batch(list(words)):
    pieces = pieces or [tokenizer.unk_id]
    if len(ids) + 1 > budget:
      break
    first.append(1 + len(ids))
    ids += pieces
  ids = [tokenizer.cls_id] + ids[:budget] + [tokenizer.sep_id]
  return ids, first


def encode_sentences(tokenizer, sentences: Sequence[Sentence], max_seq_length: int):
  """Padded input_ids / input_mask (N x S) and each sentence's first-sub-token positions."""
  n = len(sentences)
  input_ids = np.full((n, max_seq_length), tokenizer.pad_id, np.int32)
  input_mask = np.zeros((n, max_seq_length), np.int32)
  firsts = []
  for i, sentence in enumerate(sentences):
    ids, first = encode_words(tokenizer, sentence.words, max_seq_length)
    input_ids[i, :len(ids)] = ids
    input_mask[i, :len(ids)] = 1
    firsts.append(first)
  return {"input_ids": input_ids, "segment_ids": np.zeros_like(input_ids),
          "input_mask": input_mask}, firsts


class ScoredTags(list):
  """Predicted tags per sentence (a list of lists, as scoring and writing take them) and
  `probabilities`: per sentence, each word's probability of its predicted tag (NaN for the
  words cut by max_seq_length, which get "O")."""

  def __init__(self, tags: list[list[str]], probabilities: list[list[float]]):
    super().__init__(tags)
    self.probabilities = probabilities


def decode(logits_NxSxT: np.ndarray, firsts: list[list[int]], sentences: Sequence[Sentence],
           labels: Sequence[str]) -> ScoredTags:
  """Predicted tag per word: the argmax at its first sub-token; cut words get "O"."""
  best_NxS = np.argmax(logits_NxSxT, axis=-1)
  tags, probabilities = [], []
  for row, (first, sentence) in enumerate(zip(firsts, sentences)):
    probs_WxT = special.softmax(np.asarray(logits_NxSxT[row, first], np.float64), axis=-1)
    chosen = best_NxS[row, first]
    cut = len(sentence.words) - len(first)
    tags.append([labels[int(t)] for t in chosen] + ["O"] * cut)
    probabilities.append(probs_WxT[np.arange(len(first)), chosen].tolist() + [np.nan] * cut)
  return ScoredTags(tags, probabilities)


def word_offsets(words: Sequence[str], text: str) -> list[tuple[int, int]]:
  """Each word's (start, end) character span in `text`, the words found in order (`text`
  split on whitespace gives them)."""
  spans, at = [], 0
  for word in words:
    start = text.index(word, at)
    spans.append((start, start + len(word)))
    at = start + len(word)
  return spans


def entity_spans(words: Sequence[str], tags: Sequence[str], probabilities: Sequence[float],
                 text: str | None = None) -> list[dict]:
  """The entities of one sentence's predicted tags: {type, text, start, end, score} with
  character offsets into `text` (default: the words joined by single spaces) and score the
  mean probability of the entity's words' tags."""
  text = " ".join(words) if text is None else text
  offsets = word_offsets(words, text)
  spans = []
  for kind, first, last in get_entities(list(tags)):
    start, end = offsets[first][0], offsets[last][1]
    spans.append({"type": kind, "text": text[start:end], "start": start, "end": end,
                  "score": float(np.mean(probabilities[first:last + 1]))})
  return spans


def write_spans(path: str, sentences: Sequence[Sentence], predicted: ScoredTags) -> None:
  """One JSON object per sentence: its first line number in the input, its text (the words
  joined by single spaces) and its `entity_spans`."""
  tmp = path + ".partial"
  with open(tmp, "w", encoding="utf-8") as f:
    for sentence, tags, probabilities in zip(sentences, predicted, predicted.probabilities):
      f.write(json.dumps({"line": sentence.number, "text": " ".join(sentence.words),
                          "entities": entity_spans(sentence.words, tags, probabilities)},
                         ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def spans_path(predictions_path: str) -> str:
  return predictions_path + ".spans.jsonl"


def write_predictions(path: str, sentences: Sequence[Sentence], predicted: list[list[str]]
                      ) -> None:
  """The input lines with a predicted-tag column appended; a blank line between sentences."""
  tmp = path + ".partial"
  with open(tmp, "w", encoding="utf-8") as f:
    for sentence, tags in zip(sentences, predicted):
      for line, tag in zip(sentence.lines, tags):
        f.write(f"{line}\t{tag}\n")
      f.write("\n")
  os.replace(tmp, path)


def read_predictions(path: str, gold_path: str | None = None
                     ) -> tuple[list[list[str]], list[list[str]]]:
  """(gold, predicted) tag sequences: the predicted tag is the last column; gold is the
  column before it, or the last column of `gold_path`'s matching lines."""
  predicted = read_conll(path, need_tags=True)
  if gold_path is None:
    gold = []
    for sentence in predicted:
      tags = []
      for offset, line in enumerate(sentence.lines):
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 3:
          raise FlaxbertError(f"{path}:{sentence.number + offset}: expected 'token<TAB>gold"
                              "<TAB>predicted' (or pass --gold)")
        tags.append(fields[-2])
      gold.append(tags)
  else:
    gold_sentences = read_conll(gold_path, need_tags=True)
    if len(gold_sentences) != len(predicted):
      raise FlaxbertError(f"{path}: {len(predicted)} sentences but {gold_path} has "
                          f"{len(gold_sentences)}")
    gold = []
    for g, p in zip(gold_sentences, predicted):
      if g.words != p.words:
        raise FlaxbertError(f"{path}:{p.number}: tokens differ from {gold_path}:{g.number}")
      gold.append(g.tags)
  return gold, [s.tags for s in predicted]


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict:
  """Entity-level precision, recall, F1 (seqeval, conlleval rules), token accuracy, and
  `per_class`: {entity type: {precision, recall, f1, support}} (seqeval's classification
  report, its average rows left out)."""
  gold, predicted = [list(s) for s in gold], [list(s) for s in predicted]
  flat_gold = [t for s in gold for t in s]
  flat_pred = [t for s in predicted for t in s]
  return {"precision": float(metrics.precision_score(gold, predicted, zero_division=0)),
          "recall": float(metrics.recall_score(gold, predicted, zero_division=0)),
          "f1": float(metrics.f1_score(gold, predicted, zero_division=0)),
          "token_accuracy": float(np.mean(np.asarray(flat_gold) == np.asarray(flat_pred)))
          if flat_gold else 0.0,
          "per_class": per_type(gold, predicted)}


def per_type(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, dict]:
  if not any(get_entities(s) for s in gold + predicted):
    return {}   # seqeval's report has no rows to give (and warns)
  report = metrics.classification_report(gold, predicted, output_dict=True, zero_division=0)
  return {kind: {"precision": float(row["precision"]), "recall": float(row["recall"]),
                 "f1": float(row["f1-score"]), "support": int(row["support"])}
          for kind, row in report.items() if not kind.endswith(" avg")}


def majority_baseline(gold: list[list[str]]) -> dict[str, float]:
  """Every word tagged "O" (the majority tag): entity F1 0 by construction."""
  return entity_scores(gold, [["O"] * len(s) for s in gold])


# --- a file prepared for the model, its predictions, their scores --------------------------

class NerInputs:
  """A CoNLL file's sentences (or texts: `of_texts`) as padded model inputs; predictions
  are tags per word with their probabilities."""

  def __init__(self, tokenizer, max_seq_length: int, labels, path: str, need_label: bool):
    self._encode(tokenizer, max_seq_length, labels, read_conll(path, need_tags=need_label))

  @classmethod
  def of_texts(cls, tokenizer, max_seq_length: int, labels, texts: Sequence[str]
               ) -> "NerInputs":
    """Texts given in memory (the pipeline's), split into words on whitespace."""
    inputs = cls.__new__(cls)
    inputs._encode(tokenizer, max_seq_length, labels,
                   [Sentence(i + 1, [], text.split(), None) for i, text in enumerate(texts)])
    return inputs

  def _encode(self, tokenizer, max_seq_length, labels, sentences):
    self.sentences, self.labels = sentences, labels
    self.arrays, self.firsts = encode_sentences(tokenizer, self.sentences, max_seq_length)

  def predictions(self, outputs) -> ScoredTags:
    return decode(outputs["logits"], self.firsts, self.sentences, self.labels)

  def score(self, predicted) -> dict:
    return entity_scores([s.tags for s in self.sentences], predicted)

  def write(self, predicted, path: str) -> None:
    """The CoNLL predictions at `path` and, for scored tags, their entity spans beside it."""
    write_predictions(path, self.sentences, predicted)
    if getattr(predicted, "probabilities", None) is not None:
      write_spans(spans_path(path), self.sentences, predicted)


def score_files(predictions: str, gold: str | None) -> dict:
  gold_tags, predicted = read_predictions(predictions, gold)
  return entity_scores(gold_tags, predicted)
