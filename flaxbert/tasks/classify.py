"""Sentence (pair) classification and regression: TSV I/O, model inputs and metrics.

Input TSV: a header row naming the columns (`sentence` or `sentence1`+`sentence2`, and
`label`), or no header with 2 (sentence, label) or 3 (sentence1, sentence2, label) columns.

Classification predictions are written as the input rows plus a `prediction` column and one
`prob_<label>` column per label (the softmax of the logits), always under a header row (the
input's, or the column names inferred for a headerless input); regression predictions add the
`prediction` column alone, with a header only if the input had one.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from scipy import special, stats

from flaxbert.data import readers
from flaxbert.errors import FlaxbertError
from flaxbert.inference.bucketing import stack_padded

TEXT_COLUMNS = (("sentence",), ("sentence1", "sentence2"))
KNOWN = {"sentence", "sentence1", "sentence2", "label", "prediction", "text", "text_a",
         "text_b"}
_ALIASES = {"text": "sentence", "text_a": "sentence1", "text_b": "sentence2"}


class TsvTable:
  """Rows of a classification TSV with named columns; `numbers` are the file line numbers."""

  def __init__(self, path: str, header: list[str] | None, columns: list[str],
               rows: list[list[str]], numbers: list[int]):
    self.path, self.header, self.columns, self.rows, self.numbers = (path, header, columns,
                                                                     rows, numbers)

  def column(self, name: str) -> list[str]:
    i = self.columns.index(name)
    return [r[i] for r in self.rows]

  def has(self, name: str) -> bool:
    return name in self.columns

  @property
  def texts(self) -> tuple[list[str], list[str] | None]:
    if self.has("sentence1"):
      return self.column("sentence1"), self.column("sentence2")
    return self.column("sentence"), None


def read_table(path: str, *, need_label: bool) -> TsvTable:
  """Reads and checks a classification TSV; a missing column is an error naming the file."""
  if not os.path.isfile(path):
    raise FlaxbertError(f"{path}: no such file")
  header, rows, numbers = None, [], []
  expected = None
  for number, line in readers._lines(path):
    if not line.strip():
      continue
    fields = line.split("\t")
    if header is None and expected is None and any(f.strip().lower() in KNOWN for f in fields):
      header = [_ALIASES.get(f.strip().lower(), f.strip().lower()) for f in fields]
      expected = len(fields)
      continue
    if expected is None:
      expected = len(fields)
    elif len(fields) != expected:
      raise FlaxbertError(f"{path}:{number}: expected {expected} tab-separated columns like "
                          f"the first row, found {len(fields)}")
    rows.append(fields)
    numbers.append(number)
  if header is not None:
    columns = header
    if "sentence" not in columns and not {"sentence1", "sentence2"} <= set(columns):
      missing = "sentence2" if "sentence1" in columns else (
          "sentence1" if "sentence2" in columns else "sentence")
      raise FlaxbertError(f"{path}:1: missing column {missing!r} (header: "
                          f"{', '.join(header)}; expected sentence or sentence1+sentence2)")
    if need_label and "label" not in columns:
      raise FlaxbertError(f"{path}:1: missing column 'label' (header: {', '.join(header)})")
  else:
    n = expected or 0
    if n == 1 and not need_label:
      columns = ["sentence"]
    elif n == 2:
      columns = ["sentence", "label"]
    elif n == 3:
      columns = ["sentence1", "sentence2", "label"]
    else:
      raise FlaxbertError(f"{path}:{numbers[0] if numbers else 1}: expected 2 (sentence, label) "
                          f"or 3 (sentence1, sentence2, label) tab-separated columns, found {n}"
                          " (or give a header row naming the columns)")
  return TsvTable(path, header, columns, rows, numbers)


PROBABILITY_PREFIX = "prob_"


def write_table(table: TsvTable, predictions: Sequence[str], path: str) -> None:
  """The input rows with a `prediction` column appended (header too, if it had one), and
  with `prob_<label>` columns after it when `predictions` carries probabilities (a
  `ScoredLabels`): then always under a header, which names the extra columns."""
  probabilities = getattr(predictions, "probabilities", None)
  header = None if table.header is None and probabilities is None else \
      (table.header or table.columns) + ["prediction"]
  if probabilities is not None:
    header += [PROBABILITY_PREFIX + label for label in predictions.label_names]
  tmp = path + ".partial"
  with open(tmp, "w", encoding="utf-8") as f:
    if header is not None:
      f.write("\t".join(header) + "\n")
    for i, (row, prediction) in enumerate(zip(table.rows, predictions)):
      extra = [] if probabilities is None else [f"{p:.6g}" for p in probabilities[i]]
      f.write("\t".join(row + [str(prediction)] + extra) + "\n")
  os.replace(tmp, path)


def write_rows(path: str, header: list[str], rows: list[list[str]]) -> None:
  tmp = path + ".partial"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\t".join(header) + "\n")
    for row in rows:
      f.write("\t".join(row) + "\n")
  os.replace(tmp, path)


# --- a file prepared for the model, its predictions, their scores --------------------------

class ScoredLabels(list):
  """Predicted labels, one per row (a list, as scoring and writing take them), with what
  they came from: `probabilities` (rows x labels, the softmax of the logits, columns in
  `label_names` order) for classification, `values` (the raw floats) for regression."""

  def __init__(self, labels: Sequence[str], label_names: Sequence[str] | None = None,
               probabilities: np.ndarray | None = None, values: np.ndarray | None = None):
    super().__init__(labels)
    self.label_names, self.probabilities, self.values = label_names, probabilities, values


class ClassifyInputs:
  """A TSV's rows (or texts: `of_texts`) as padded model inputs; predictions are label names
  with their probabilities (regression: numbers written with 6 significant digits)."""

  def __init__(self, tokenizer, max_seq_length: int, labels, path: str, need_label: bool,
               regression: bool = False):
    self.table = read_table(path, need_label=need_label)
    a, b = self.table.texts
    self._encode(tokenizer, max_seq_length, labels, regression,
                 list(zip(a, b if b is not None else [None] * len(a))))

  @classmethod
  def of_texts(cls, tokenizer, max_seq_length: int, labels,
               texts: Sequence[tuple[str, str | None]], regression: bool = False
               ) -> "ClassifyInputs":
    """(text_a, text_b or None) rows given in memory (the pipeline's): no table to write."""
    inputs = cls.__new__(cls)
    inputs.table = None
    inputs._encode(tokenizer, max_seq_length, labels, regression, list(texts))
    return inputs

  def _encode(self, tokenizer, max_seq_length, labels, regression, texts):
    self.labels, self.regression = labels, regression
    rows = tokenizer.encode_inputs(texts, max_seq_length)
    self.arrays = {k: stack_padded([r[k] for r in rows], max_seq_length,
                                   tokenizer.pad_id if k == "input_ids" else 0)
                   for k in ("input_ids", "segment_ids", "input_mask")}

  def predictions(self, outputs) -> ScoredLabels:
    logits_NxC = np.asarray(outputs["logits"], np.float64)
    if self.regression:
      return ScoredLabels([f"{v:.6g}" for v in logits_NxC[:, 0].tolist()],
                          values=logits_NxC[:, 0])
    return ScoredLabels([self.labels[i] for i in np.argmax(logits_NxC, axis=-1).tolist()],
                        self.labels, special.softmax(logits_NxC, axis=-1))

  def gold(self) -> list[str]:
    return [g.strip() for g in self.table.column("label")]

  def score(self, predicted) -> dict:
    gold = self.gold()
    if self.regression:
      return regression_metrics(parse_float(self.table, gold, "label"),
                                [float(p) for p in predicted])
    return classification_metrics(gold, predicted)

  def write(self, predicted, path: str) -> None:
    write_table(self.table, predicted, path)


def score_files(predictions: str, gold: str | None, regression: bool | None = None
                ) -> dict:
  """Scores of a `predict` TSV (its `prediction` column; without a header, its last column)
  against `gold`'s label column, or against its own label column. `regression=None`:
  regression metrics when labels or predictions are not all integers."""
  table = read_table(predictions, need_label=gold is None)
  if not table.has("prediction") and table.header is not None:
    raise FlaxbertError(f"{predictions}:1: missing column 'prediction'")
  # The last `prediction` column: a predictions file given to predict again keeps its own.
  column = len(table.columns) - 1 - table.columns[::-1].index("prediction") \
      if table.header is not None else -1
  predicted = [r[column].strip() for r in table.rows]
  if gold is None:
    if table.header is None:   # no header: the column before the prediction is the label
      labels = [r[-2].strip() for r in table.rows]
    else:
      labels = [g.strip() for g in table.column("label")]
    gold_table = table
  else:
    gold_table = read_table(gold, need_label=True)
    labels = [g.strip() for g in gold_table.column("label")]
    if len(labels) != len(predicted):
      raise FlaxbertError(f"{predictions}: {len(predicted)} rows but {gold} has {len(labels)}")
  if regression:
    return regression_metrics(parse_float(gold_table, labels, "label"),
                              parse_float(table, predicted, "prediction"))
  if regression is None:
    try:
      gold_values = [float(x) for x in labels]
      numeric = not all(x.lstrip("-").isdigit() for x in labels) or \
          not all(x.lstrip("-").isdigit() for x in predicted)
      if numeric:
        return regression_metrics(gold_values, [float(x) for x in predicted])
    except ValueError:
      pass
  return classification_metrics(labels, predicted)


# --- metrics --------------------------------------------------------------------------------

def accuracy(gold: Sequence, pred: Sequence) -> float:
  gold, pred = np.asarray(gold), np.asarray(pred)
  return float(np.mean(gold == pred)) if len(gold) else 0.0


def confusion_matrix(gold: Sequence[str], pred: Sequence[str]) -> tuple[list[str], np.ndarray]:
  """(the labels of gold and predictions, sorted; counts: rows gold, columns predicted)."""
  labels = sorted(set(gold) | set(pred))
  index = {label: i for i, label in enumerate(labels)}
  matrix = np.zeros((len(labels), len(labels)), np.int64)
  np.add.at(matrix, (np.asarray([index[g] for g in gold], np.int64),
                     np.asarray([index[p] for p in pred], np.int64)), 1)
  return labels, matrix


def per_class(labels: Sequence[str], matrix: np.ndarray) -> dict[str, dict]:
  """{label: {precision, recall, f1, support}} of a confusion matrix (0 where a ratio has no
  denominator, as sklearn's zero_division=0)."""
  tp, gold_n, pred_n = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
  out = {}
  for i, label in enumerate(labels):
    out[label] = {"precision": float(tp[i] / pred_n[i]) if pred_n[i] else 0.0,
                  "recall": float(tp[i] / gold_n[i]) if gold_n[i] else 0.0,
                  "f1": float(2 * tp[i] / (pred_n[i] + gold_n[i])) if gold_n[i] + pred_n[i]
                  else 0.0,
                  "support": int(gold_n[i])}
  return out


def matthews(matrix: np.ndarray) -> float:
  """Multiclass Matthews correlation of a confusion matrix (Gorodkin's R_K, as sklearn's
  matthews_corrcoef)."""
  confusion = matrix.astype(np.float64)
  t, p = confusion.sum(axis=1), confusion.sum(axis=0)
  c, s = np.trace(confusion), confusion.sum()
  cov_ytyp = c * s - t @ p
  cov_ypyp = s * s - p @ p
  cov_ytyt = s * s - t @ t
  denom = math.sqrt(cov_ytyt * cov_ypyp)
  return float(cov_ytyp / denom) if denom else 0.0


def classification_metrics(gold: Sequence[str], pred: Sequence[str]) -> dict:
  """accuracy, macro_f1 (the mean per-class F1 over the classes in gold or predictions,
  sklearn's `average="macro"`), matthews (floats); `confusion_matrix` {"labels", "matrix":
  rows gold, columns predicted} and `per_class` {label: {precision, recall, f1, support}},
  in plain ints and floats (JSON as they are). All but accuracy come from the one matrix."""
  labels, matrix = confusion_matrix(gold, pred)
  classes = per_class(labels, matrix)
  return {"accuracy": accuracy(gold, pred),
          "macro_f1": float(np.mean([c["f1"] for c in classes.values()])) if classes else 0.0,
          "matthews": matthews(matrix),
          "confusion_matrix": {"labels": labels, "matrix": matrix.tolist()},
          "per_class": classes}


def regression_metrics(gold: Sequence[float], pred: Sequence[float]) -> dict[str, float]:
  gold, pred = np.asarray(gold, np.float64), np.asarray(pred, np.float64)
  constant = np.std(gold) == 0 or np.std(pred) == 0
  return {"pearson": 0.0 if constant else float(stats.pearsonr(gold, pred)[0]),
          "spearman": 0.0 if constant else float(stats.spearmanr(gold, pred)[0]),
          "mse": float(np.mean((gold - pred) ** 2))}


def majority_baseline(train_labels: Sequence[str], gold: Sequence[str]) -> dict[str, float]:
  """The metrics of always predicting the most frequent training label."""
  values, counts = np.unique(np.asarray(train_labels), return_counts=True)
  majority = values[np.argmax(counts)]
  return classification_metrics(gold, [majority] * len(gold))


def parse_float(table: TsvTable, values: Sequence[str], what: str) -> list[float]:
  out = []
  for number, value in zip(table.numbers, values):
    try:
      out.append(float(value))
    except ValueError:
      raise FlaxbertError(f"{table.path}:{number}: {what} {value!r} is not a number") from None
  return out
