"""SQuAD v1.1 / v2.0: input checks, n-best span search over windows, the official EM/F1.

`normalize_answer`, `exact_match` and `f1` follow the official evaluation scripts
(evaluate-v1.1.py / evaluate-v2.0.py): lowercase, punctuation removed, the articles
a/an/the removed, whitespace collapsed; a question's score is its best over the gold answers.
v2.0's unanswerable questions have the gold answer "" (as the v2.0 script).

Besides the answers (`predictions.json`-style: id -> text), the search gives what BERT's
run_squad.py writes beside them: `nbest_predictions.json` (per id, the n best distinct
answers with their probability, start/end logits and character offsets into the context)
and, for v2.0, `null_odds.json` (per id, the null score minus the best non-null score);
`best_thresholds` is evaluate-v2.0.py's search for the best null threshold over those odds.
"""

from __future__ import annotations

import collections
import json
import os
import re
import string
from typing import Iterable, Sequence

import numpy as np
from scipy import special

from flaxbert.data import readers
from flaxbert.data.finetuning import squad_examples
from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import load_json


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


def score(gold: dict[str, list[str]], predictions: dict[str, str],
          null_odds: dict[str, float] | None = None) -> dict[str, float]:
  """exact_match and f1 in percent over every gold question (a missing prediction scores 0),
  plus HasAns/NoAns splits when some questions are unanswerable, and with `null_odds` (v2.0)
  best_exact / best_f1 and their thresholds (`best_threshold`)."""
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
  no_answer = [q for q, a in gold.items() if not has_answer(a)]
  if no_answer:
    has = [q for q in gold if q not in set(no_answer)]
    for name, ids in (("HasAns", has), ("NoAns", no_answer)):
      if ids:
        out[f"{name}_exact_match"] = 100.0 * sum(em[q] for q in ids) / len(ids)
        out[f"{name}_f1"] = 100.0 * sum(f[q] for q in ids) / len(ids)
        out[f"{name}_total"] = len(ids)
  if null_odds is not None:
    answered = {q: predictions[q] for q in gold if q in predictions}
    out.update(best_thresholds(
        answered, {q: em[q] for q in answered},
        {q: f[q] for q in answered}, null_odds, {q: has_answer(a) for q, a in gold.items()}))
  return out


def has_answer(answers: Sequence[str]) -> bool:
  return any(normalize_answer(a) for a in answers)


def best_threshold(predictions: dict[str, str], scores: dict[str, float],
                   null_odds: dict[str, float], has_ans: dict[str, bool]) -> tuple[float, float]:
  """(best score in percent, its threshold) over null thresholds, as evaluate-v2.0.py's
  find_best_thresh: start from every question answered "" (the unanswerable ones right),
  then answer them in increasing order of null odds, each one answered adding its score
  (an unanswerable one answered with text loses its point); the best running total, and the
  odds of the question that reached it (0.0 if answering none is best). `scores` hold the
  questions with a prediction (the total divides by their number); `has_ans` every gold
  question."""
  current = best = float(sum(1 for q in has_ans if not has_ans[q]))
  threshold = 0.0
  for qid in sorted(null_odds, key=lambda q: null_odds[q]):
    if qid not in scores:
      continue
    if has_ans[qid]:
      current += scores[qid]
    elif predictions[qid]:
      current -= 1
    if current > best:
      best, threshold = current, null_odds[qid]
  return 100.0 * best / len(scores), threshold


def best_thresholds(predictions, exact, f1s, null_odds, has_ans) -> dict[str, float]:
  """best_exact, best_exact_thresh, best_f1, best_f1_thresh (find_all_best_thresh)."""
  if not exact:
    return {}
  best_exact, exact_threshold = best_threshold(predictions, exact, null_odds, has_ans)
  best_f1, f1_threshold = best_threshold(predictions, f1s, null_odds, has_ans)
  return {"best_exact": best_exact, "best_exact_thresh": float(exact_threshold),
          "best_f1": best_f1, "best_f1_thresh": float(f1_threshold)}


# --- reading ---------------------------------------------------------------------------------

def _line_of(raw: str, needle: str, default: int = 1) -> int:
  at = raw.find(needle)
  return raw.count("\n", 0, at) + 1 if at >= 0 else default


def check_answers(path: str) -> None:
  """Every answer's `answer_start` must point at its text; else an error with file and line."""
  data = load_json(path)
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
  data = load_json(path)
  if str(data.get("version", "")).startswith("v2") or str(data.get("version", "")) == "2.0":
    return True
  return any(qa.get("is_impossible") for article in data.get("data", [])
             for p in article.get("paragraphs", []) for qa in p.get("qas", []))


def write_subset(path: str, out: str, keep: set[str]) -> None:
  """A SQuAD file with only the questions whose ids are in `keep` (empty paragraphs dropped)."""
  data = load_json(path)
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


class Answers(dict):
  """Question id -> answer text (a dict, as scoring and writing take it), with `nbest`: id ->
  the n best distinct answers, best first, each {text, probability (softmax over the list's
  scores), start_logit, end_logit, start, end (character offsets into the context; 0, 0 for
  the null answer "")}, and `null_odds` (v2.0 only, else None): id -> null score minus the
  best non-null score (as run_squad.py; with no valid span the best non-null score counts
  as 0, run_squad's placeholder, and the answer is "")."""

  def __init__(self, answers: dict[str, str], nbest: dict[str, list[dict]],
               null_odds: dict[str, float] | None):
    super().__init__(answers)
    self.nbest, self.null_odds = nbest, null_odds


def _ranked(logits_S: np.ndarray, valid_S: np.ndarray, n_best: int) -> np.ndarray:
  """The n_best positions of the largest logits among the valid (context) ones."""
  order = np.argsort(-np.where(valid_S, logits_S, -np.inf), kind="stable")[:n_best]
  return order[valid_S[order]]


def best_answers(questions: Sequence[dict], window_ids: Sequence[str], arrays: dict,
                 start_logits: np.ndarray, end_logits: np.ndarray, *, n_best: int = 20,
                 max_answer_length: int = 30, null_threshold: float | None = None
                 ) -> Answers:
  """BERT run_squad's search: for each question, the (start, end) pairs over all its windows
  among the n_best starts x n_best ends of each window's context tokens, end >= start, at
  most max_answer_length tokens, start in its max-context window; score = start + end logit.
  The answer is the best one's text. With `null_threshold` (v2.0), the answer is "" when the
  null score (the smallest [CLS] start + end over the windows) minus the best span score
  exceeds the threshold. (run_squad ranks starts and ends over every position, question and
  padding too; ranking the context alone finds every pair that would find and more, and makes
  the answer independent of how far a window is padded.)"""
  by_question = collections.defaultdict(list)
  for row, qid in enumerate(window_ids):
    by_question[qid].append(row)
  answers, nbest, null_odds = {}, {}, {} if null_threshold is not None else None
  for question in questions:
    qid, context = question["id"], question["context"]
    spans = []   # (score, start logit, end logit, char start, char end) in search order
    null = None
    for row in by_question.get(qid, []):
      s_logits, e_logits = start_logits[row], end_logits[row]
      char_start, char_end = arrays["token_char_start"][row], arrays["token_char_end"][row]
      max_context = arrays["token_is_max_context"][row]
      cls_score = float(s_logits[0] + e_logits[0])
      if null is None or cls_score < null[0]:
        null = (cls_score, float(s_logits[0]), float(e_logits[0]), 0, 0)
      for s in _ranked(s_logits, char_start >= 0, n_best):
        if not max_context[s]:
          continue
        for e in _ranked(e_logits, char_end >= 0, n_best):
          if e < s or e - s + 1 > max_answer_length:
            continue
          spans.append((float(s_logits[s] + e_logits[e]), float(s_logits[s]),
                        float(e_logits[e]), int(char_start[s]), int(char_end[e])))
    candidates = spans + ([null] if null_odds is not None and null is not None else [])
    # Stable: among equal scores the first found wins, and the null answer comes last.
    candidates.sort(key=lambda c: -c[0])
    kept, seen = [], set()
    for total, s_logit, e_logit, begin, stop in candidates:
      text = context[begin:stop]
      if text not in seen:
        seen.add(text)
        kept.append((text, total, s_logit, e_logit, begin, stop))
        if len(kept) >= n_best:
          break
    if null_odds is not None and null is not None and "" not in seen:
      kept.append(("", *null))
    probabilities = special.softmax(np.array([k[1] for k in kept], np.float64)).tolist() \
        if kept else []
    entries = [{"text": text, "probability": p, "start_logit": s_logit, "end_logit": e_logit,
                "start": begin, "end": stop}
               for (text, _, s_logit, e_logit, begin, stop), p in zip(kept, probabilities)]
    best = next((k for k in kept if k[0]), None)
    answer = best[0] if best is not None else ""
    if null_odds is not None and null is not None:
      null_odds[qid] = null[0] - (best[1] if best is not None else 0.0)
      if best is None or null_odds[qid] > null_threshold:
        answer = ""
    answers[qid] = answer
    nbest[qid] = entries
  return Answers(answers, nbest, null_odds)


def _dump(path: str, content) -> None:
  """Renamed into place: a kill never leaves half a file."""
  tmp = path + ".partial"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(content, f, ensure_ascii=False, indent=1)
  os.replace(tmp, path)


NBEST_FILE, NULL_ODDS_FILE = "nbest_predictions.json", "null_odds.json"


def write_predictions(path: str, answers: dict[str, str]) -> None:
  """The answers at `path` and, for `Answers`, nbest_predictions.json (and for v2.0
  null_odds.json) in the same directory, as run_squad.py names them."""
  _dump(path, dict(answers))
  directory = os.path.dirname(os.path.abspath(path))
  if getattr(answers, "nbest", None) is not None:
    _dump(os.path.join(directory, NBEST_FILE), answers.nbest)
  if getattr(answers, "null_odds", None) is not None:
    _dump(os.path.join(directory, NULL_ODDS_FILE), answers.null_odds)


def read_predictions(path: str) -> dict[str, str]:
  data = load_json(path)
  if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
    raise FlaxbertError(f"{path}: expected a JSON object question id -> answer text")
  return data


def read_null_odds(path: str) -> dict[str, float]:
  data = load_json(path)
  if not isinstance(data, dict) or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in data.values()):
    raise FlaxbertError(f"{path}: expected a JSON object question id -> null odds (a number, "
                        f"as predict writes to {NULL_ODDS_FILE})")
  return {k: float(v) for k, v in data.items()}


# --- a file prepared for the model, its predictions, their scores --------------------------

class QaInputs:
  """A SQuAD file's windows as padded model inputs; predictions map question id -> answer.

  `settings` gives doc_stride, max_query_length, n_best, max_answer_length and
  null_threshold (None: v1.1, always answer)."""

  def __init__(self, tokenizer, settings, path: str, need_label: bool):
    if need_label:
      check_answers(path)
    self._encode(tokenizer, settings, read_questions(path))

  @classmethod
  def of_questions(cls, tokenizer, settings, questions: Sequence[dict]) -> "QaInputs":
    """Questions given in memory (the pipeline's): dicts of id, question, context, answers."""
    inputs = cls.__new__(cls)
    inputs._encode(tokenizer, settings, list(questions))
    return inputs

  def _encode(self, tokenizer, settings, questions):
    self.settings, self.questions = settings, questions
    windows = [w for _, w in squad_examples(tokenizer, self.questions, settings.max_seq_length,
                                            settings.doc_stride, settings.max_query_length)]
    self.window_ids = [w["example_id"] for w in windows]
    self.arrays = window_arrays(windows, settings.max_seq_length, tokenizer.pad_id)

  def predictions(self, outputs) -> Answers:
    s = self.settings
    return best_answers(self.questions, self.window_ids, self.arrays, outputs["start_logits"],
                        outputs["end_logits"], n_best=s.n_best,
                        max_answer_length=s.max_answer_length, null_threshold=s.null_threshold)

  def score(self, predicted) -> dict[str, float]:
    """The official scores; for v2.0 `Answers` also the best null thresholds."""
    return score(gold_answers(self.questions), predicted, getattr(predicted, "null_odds", None))

  def write(self, predicted, path: str) -> None:
    write_predictions(path, predicted)


def score_files(predictions: str, gold: str | None, null_odds: str | None = None
                ) -> dict[str, float]:
  """The official scores of a predictions file; with a null odds file (v2.0) also
  best_exact, best_exact_thresh, best_f1, best_f1_thresh."""
  if gold is None:
    raise FlaxbertError("qa: pass the gold SQuAD JSON with --gold")
  check_answers(gold)
  return score(gold_answers(read_questions(gold)), read_predictions(predictions),
               read_null_odds(null_odds) if null_odds is not None else None)
