"""Readers for the raw text formats flaxbert accepts, with errors that name file and line.

Every reader either returns clean records or raises `FlaxbertError("<file>:<line>: ...")`;
records it chooses to skip (empty documents, over-long lines, SQuAD answers that do not match
their context) are counted in a `SkipCounter`, which logs one warning line per reason naming
the first place it happened. Nothing is dropped without a log line.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator, Sequence

from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import load_json

log = logging.getLogger("flaxbert.data")

# A "sentence" longer than this is almost surely not prose (a minified blob, a table dumped on
# one line). BERT would keep its first few hundred tokens; tokenizing a million characters to
# keep 500 of them costs seconds, so such lines are skipped and counted instead.
MAX_LINE_CHARS = 100_000


class SkipCounter:
  """Counts records skipped or altered (cut to length), per reason, with the first place."""

  def __init__(self, what: str):
    self.what = what
    self.counts: dict[str, int] = {}
    self.first: dict[str, str] = {}

  def skip(self, reason: str, where: str) -> None:
    self.counts[reason] = self.counts.get(reason, 0) + 1
    self.first.setdefault(reason, where)

  def log(self) -> None:
    for reason, count in sorted(self.counts.items()):
      log.warning("%s: %d %s (first at %s)", self.what, count, reason, self.first[reason])


def _lines(path: str) -> Iterator[tuple[int, str]]:
  """(line number, text without newline); non-UTF-8 bytes are an error naming the line."""
  if not os.path.isfile(path):
    raise FlaxbertError(f"{path}: no such file")
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise FlaxbertError(f"{path}:{number}: not UTF-8 (byte {raw[e.start]:#04x} at column "
                            f"{e.start + 1})") from None
      yield number, text.rstrip("\r\n")


def iter_documents(paths: Sequence[str], skips: SkipCounter,
                   max_line_chars: int = MAX_LINE_CHARS) -> Iterator[list[str]]:
  """Documents of a corpus in BERT's format: one sentence per line, blank lines between
  documents. A document is a list of non-empty sentences; empty documents never appear
  (runs of blank lines are just one boundary), documents emptied by skipped lines are counted.
  """
  for path in paths:
    sentences: list[str] = []
    had_lines = False
    for number, line in _lines(path):
      line = line.strip()
      if not line:
        if had_lines and not sentences:
          skips.skip("documents skipped: all their lines were skipped", f"{path}:{number}")
        if sentences:
          yield sentences
        sentences, had_lines = [], False
        continue
      had_lines = True
      if len(line) > max_line_chars:
        skips.skip(f"lines skipped: over {max_line_chars} characters", f"{path}:{number}")
        continue
      sentences.append(line)
    if sentences:
      yield sentences


def read_lines(path: str) -> Iterator[tuple[int, str]]:
  """(line number, text without newline) of a UTF-8 text file; bad bytes name the line."""
  return _lines(path)


def read_tsv(path: str, num_columns: Sequence[int], header: bool | None = None
             ) -> Iterator[tuple[int, list[str]]]:
  """(line number, fields) of a tab-separated file without quoting.

  `num_columns` lists the column counts the first row may have; every later row must have
  the first row's count. `header=None` skips a first row made only of column names
  (`sentence`, `label`, `source`, ...), as the shipped TSVs have.
  """
  expected = None
  for number, line in _lines(path):
    if not line.strip():
      continue
    fields = line.split("\t")
    if expected is None:
      if len(fields) not in num_columns:
        allowed = " or ".join(str(n) for n in num_columns)
        raise FlaxbertError(f"{path}:{number}: expected {allowed} tab-separated columns, "
                            f"found {len(fields)}")
      expected = len(fields)
      if header or (header is None and _looks_like_header(fields)):
        continue
    elif len(fields) != expected:
      raise FlaxbertError(f"{path}:{number}: expected {expected} tab-separated columns like "
                          f"the first row, found {len(fields)}")
    yield number, fields


_HEADER_NAMES = {"label", "labels", "target", "source", "sentence", "sentence1", "sentence2",
                 "text", "text_a", "text_b", "score", "class", "question", "src", "tgt"}


def _looks_like_header(fields: list[str]) -> bool:
  return all(f.strip().lower() in _HEADER_NAMES for f in fields)


def read_conll(path: str) -> Iterator[tuple[int, list[str], list[str]]]:
  """(first line number, tokens, tags) per sentence of a `token<TAB>tag` CoNLL file.

  Extra columns between token and tag (CoNLL-2003's POS/chunk) are allowed: the first column
  is the token and the last the tag. `-DOCSTART-` lines are document markers, not tokens.
  """
  tokens: list[str] = []
  tags: list[str] = []
  start = 0
  for number, line in _lines(path):
    if not line.strip():
      if tokens:
        yield start, tokens, tags
      tokens, tags = [], []
      continue
    fields = line.split("\t") if "\t" in line else line.split()
    if len(fields) < 2:
      raise FlaxbertError(f"{path}:{number}: expected 'token<TAB>tag', found {line[:60]!r}")
    if fields[0] == "-DOCSTART-":
      continue
    if not tokens:
      start = number
    tokens.append(fields[0])
    tags.append(fields[-1])
  if tokens:
    yield start, tokens, tags


def read_squad(path: str, skips: SkipCounter) -> list[dict]:
  """SQuAD v1.1 / v2.0 questions: dicts with id, question, context, answers (text,
  answer_start); v2.0's unanswerable questions (`is_impossible`) have no answers.

  An answer whose `answer_start` does not point at its text is skipped and counted (the
  question is kept if another answer is right); a missing key is an error naming the id.
  """
  data = load_json(path)
  if not isinstance(data, dict) or not isinstance(data.get("data"), list):
    raise FlaxbertError(f"{path}: not SQuAD JSON (expected an object with a 'data' list)")
  questions = []
  seen_ids: set[str] = set()
  for article_index, article in enumerate(data["data"]):
    for paragraph_index, paragraph in enumerate(article.get("paragraphs", [])):
      where = f"{path}: data[{article_index}].paragraphs[{paragraph_index}]"
      try:
        context = paragraph["context"]
        qas = paragraph["qas"]
      except (KeyError, TypeError):
        raise FlaxbertError(f"{where}: needs 'context' and 'qas'") from None
      for qa in qas:
        try:
          qid, question, answers = str(qa["id"]), qa["question"], qa.get("answers", [])
          answers = [{"text": a["text"], "answer_start": int(a["answer_start"])} for a in answers]
        except (KeyError, TypeError, ValueError):
          raise FlaxbertError(f"{where}: question {qa.get('id', '?')!r} needs 'id', 'question' "
                              f"and answers with 'text' and 'answer_start'") from None
        if qa.get("is_impossible"):   # SQuAD v2.0: no answer; its windows point at [CLS]
          answers = []
        if qid in seen_ids:
          raise FlaxbertError(f"{where}: duplicate question id {qid!r}")
        seen_ids.add(qid)
        good = [a for a in answers
                if context[a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]]
        if len(good) < len(answers):
          skips.skip("answers skipped: answer_start does not point at the text", f"{where} id {qid}")
        if answers and not good:
          skips.skip("questions skipped: no answer points at its text", f"{where} id {qid}")
          continue
        questions.append({"id": qid, "question": question, "context": context, "answers": good})
  return questions
