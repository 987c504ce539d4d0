"""SQuAD v1.1 / v2.0: input checks, n-best span search over windows, the official EM/F1.

`normalize_answer`, `exact_match` and `f1` follow the official evaluation scripts
(evaluate-v1.1.py / evaluate-v2.0.py): lowercase, punctuation removed, the articles
a/an/the removed, whitespace collapsed; a question's score is its best over the gold answers.
v2.0's unanswerable questions have the gold answer "" (as the v2.0 script).
"""

from __future__ import annotations

import collections
import json
import os
import re
import string
from typing import Iterable, Sequence

import numpy as np

from flaxbert.data import readers
from flaxbert.data.finetuning import squad_examples
from flaxbert.errors import FlaxbertError


# --- the official normalisation and scores ---------------------------------------------------

def normalize_answer(s: str) -> str:
  def remove_articles(text):
    return re.sub(r"\b(a|an|the)\b", " ", text)

  def white_space_fix(text):
    return " ".join(text.split())

  def remove_punc(text):
    exclude = set(string.punctuation)
    return "".join(ch for ch in text if ch not in exclude)

  return white_space_fix(remove_articles(remove_punc(s.lower())))


def exact_match(prediction: str, ground_truth: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1(prediction: str, ground_truth: str) -> float:
  pred_tokens = normalize_answer(prediction).split()
  gold_tokens = normalize_answer(ground_truth).split()
  if not pred_tokens or not gold_tokens:   # v2.0: both empty scores 1, one empty scores 0
    return float(pred_tokens == gold_tokens)
  common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def score(gold: dict[str, list[str]], predictions: dict[str, str]) -> dict[str, float]:
  """exact_match and f1 in percent over every gold question (a missing prediction scores 0),
  plus HasAns/NoAns splits when some questions are unanswerable."""
  em = {}
  f = {}
  for qid, answers in gold.items():
    answers = [a for a in answers if normalize_answer(a)] or [""]
    prediction = predictions.get(qid)
    if prediction is None:
      em[qid] = f[qid] = 0.0
      continue
    em[qid] = max(exact_match(prediction, a) for a in answers)
    f[qid] = max(f1(prediction, a) for a in answers)
  n = max(len(gold), 1)
  out = {"exact_match": 100.0 * sum(em.values()) / n, "f1": 100.0 * sum(f.values()) / n,
         "total": len(gold), "missing": sum(1 for q in gold if q not in predictions)}
  no_answer = [q for q, a in gold.items() if not any(normalize_answer(x) for x in a)]
  if no_answer:
    has = [q for q in gold if q not in set(no_answer)]
    for name, ids in (("HasAns", has), ("NoAns", no_answer)):
      if ids:
        out[f"{name}_exact_match"] = 100.0 * sum(em[q] for q in ids) / len(ids)
        out[f"{name}_f1"] = 100.0 * sum(f[q] for q in ids) / len(ids)
  return out


# --- reading ---------------------------------------------------------------------------------

def _line_of(raw: str, needle: str, default: int = 1) -> int:
  at = raw.find(needle)
  return raw.count("\n", 0, at) + 1 if at >= 0 else default


def check_answers(path: str) -> None:
  """Every answer's `answer_start` must point at its text; else an error with file and line."""
  data = readers._read_json(path)
  if not isinstance(data, dict) or not isinstance(data.get("data"), list):
    raise FlaxbertError(f"{path}: not SQuAD JSON (expected an object with a 'data' list)")
  raw = None
  for article in data["data"]:
    for paragraph in article.get("paragraphs", []) if isinstance(article, dict) else []:
      context = paragraph.get("context", "") if isinstance(paragraph, dict) else ""
      for qa in paragraph.get("qas", []) if isinstance(paragraph, dict) else []:
        for answer in qa.get("answers", []) if isinstance(qa, dict) else []:
          try:
            start, text = int(answer["answer_start"]), answer["text"]
          except (KeyError, TypeError, ValueError):
            continue   # read_squad names the missing key
          if context[start:start + len(text)] != text:
            if raw is None:
              with open(path, encoding="utf-8") as f:
                raw = f.read()
            line = _line_of(raw, json.dumps(str(qa.get("id")), ensure_ascii=False))
            raise FlaxbertError(
                f"{path}:{line}: question {qa.get('id')!r}: answer {text!r} does not match the "
                f"context at answer_start {start} (the context there reads "
                f"{context[start:start + len(text)]!r})")


def read_questions(path: str) -> list[dict]:
  """Questions (id, question, context, answers) of a SQuAD file (answers may be empty)."""
  skips = readers.SkipCounter(path)
  questions = readers.read_squad(path, skips)
  skips.log()
  return questions


def gold_answers(questions: Iterable[dict]) -> dict[str, list[str]]:
  return {q["id"]: [a["text"] for a in q["answers"]] for q in questions}


def version_2(path: str) -> bool:
  data = readers._read_json(path)
  if str(data.get("version", "")).startswith("v2") or str(data.get("version", "")) == "2.0":
    return True
  return any(qa.get("is_impossible") for article in data.get("data", [])
             for p in article.get("paragraphs", []) for qa in p.get("qas", []))


def write_subset(path: str, out: str, keep: set[str]) -> None:
  """A SQuAD file with only the questions whose ids are in `keep` (empty paragraphs dropped)."""
  data = readers._read_json(path)
  articles = []
  for article in data["data"]:
    paragraphs = []
    for paragraph in article.get("paragraphs", []):
      qas = [qa for qa in paragraph["qas"] if str(qa["id"]) in keep]
      if qas:
        paragraphs.append({**paragraph, "qas": qas})
    if paragraphs:
      articles.append({**article, "paragraphs": paragraphs})
  tmp = out + ".partial"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({**data, "data": articles}, f, ensure_ascii=False)
  os.replace(tmp, out)


# --- windows and span search -----------------------------------------------------------------

def window_arrays(windows: Sequence[dict], max_seq_length: int, pad_id: int
                  ) -> dict[str, np.ndarray]:
  """Stacked, padded arrays of `finetuning.squad_examples` windows."""
  n = len(windows)
  out = {"input_ids": np.full((n, max_seq_length), pad_id, np.int32),
         "segment_ids": np.zeros((n, max_seq_length), np.int32),
         "input_mask": np.zeros((n, max_seq_length), np.int32),
         "token_char_start": np.full((n, max_seq_length), -1, np.int32),
         "token_char_end": np.full((n, max_seq_length), -1, np.int32),
         "token_is_max_context": np.zeros((n, max_seq_length), np.int32)}
  for i, w in enumerate(windows):
    length = len(w["input_ids"])
    out["input_mask"][i, :length] = 1
    for key in ("input_ids", "segment_ids", "token_char_start", "token_char_end",
                "token_is_max_context"):
      out[key][i, :length] = w[key]
  return out


def best_answers(questions: Sequence[dict], window_ids: Sequence[str], arrays: dict,
                 start_logits: np.ndarray, end_logits: np.ndarray, *, n_best: int = 20,
                 max_answer_length: int = 30, null_threshold: float | None = None
                 ) -> dict[str, str]:
  """BERT run_squad's search: for each question, the best (start, end) over all its windows
  among the n_best starts x n_best ends of each window, both inside the context, end >=
  start, at most max_answer_length tokens, start in its max-context window. Score =
  start + end logit. With `null_threshold` (v2.0), the answer is "" when the smallest
  [CLS] score over the windows minus the best span score exceeds the threshold."""
  by_question = collections.defaultdict(list)
  for row, qid in enumerate(window_ids):
    by_question[qid].append(row)
  answers = {}
  for question in questions:
    qid, context = question["id"], question["context"]
    best_score, best_text = -np.inf, ""
    null_score = np.inf
    for row in by_question.get(qid, []):
      s_logits, e_logits = start_logits[row], end_logits[row]
      char_start, char_end = arrays["token_char_start"][row], arrays["token_char_end"][row]
      max_context = arrays["token_is_max_context"][row]
      null_score = min(null_score, float(s_logits[0] + e_logits[0]))
      starts = np.argsort(-s_logits, kind="stable")[:n_best]
      ends = np.argsort(-e_logits, kind="stable")[:n_best]
      for s in starts:
        if char_start[s] < 0 or not max_context[s]:
          continue
        for e in ends:
          if char_end[e] < 0 or e < s or e - s + 1 > max_answer_length:
            continue
          total = float(s_logits[s] + e_logits[e])
          if total > best_score:
            best_score, best_text = total, context[char_start[s]:char_end[e]]
    if null_threshold is not None and (best_score == -np.inf
                                       or null_score - best_score > null_threshold):
      best_text = ""
    answers[qid] = best_text
  return answers


def write_predictions(path: str, answers: dict[str, str]) -> None:
  tmp = path + ".partial"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(answers, f, ensure_ascii=False, indent=1)
  os.replace(tmp, path)


def read_predictions(path: str) -> dict[str, str]:
  data = readers._read_json(path)
  if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
    raise FlaxbertError(f"{path}: expected a JSON object question id -> answer text")
  return data


# --- a file prepared for the model, its predictions, their scores --------------------------

class QaInputs:
  """A SQuAD file's windows as padded model inputs; predictions map question id -> answer.

  `settings` gives doc_stride, max_query_length, n_best, max_answer_length and
  null_threshold (None: v1.1, always answer)."""

  def __init__(self, tokenizer, settings, path: str, need_label: bool):
    if need_label:
      check_answers(path)
    self.settings = settings
    self.questions = read_questions(path)
    windows = [w for _, w in squad_examples(tokenizer, self.questions, settings.max_seq_length,
                                            settings.doc_stride, settings.max_query_length)]
    self.window_ids = [w["example_id"] for w in windows]
    self.arrays = window_arrays(windows, settings.max_seq_length, tokenizer.pad_id)

  def predictions(self, outputs) -> dict[str, str]:
    s = self.settings
    return best_answers(self.questions, self.window_ids, self.arrays, outputs["start_logits"],
                        outputs["end_logits"], n_best=s.n_best,
                        max_answer_length=s.max_answer_length, null_threshold=s.null_threshold)

  def score(self, predicted) -> dict[str, float]:
    return score(gold_answers(self.questions), predicted)

  def write(self, predicted, path: str) -> None:
    write_predictions(path, predicted)


def score_files(predictions: str, gold: str | None) -> dict[str, float]:
  if gold is None:
    raise FlaxbertError("qa: pass the gold SQuAD JSON with --gold")
  check_answers(gold)
  return score(gold_answers(read_questions(gold)), read_predictions(predictions))
