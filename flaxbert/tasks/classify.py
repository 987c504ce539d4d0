"""Sentence (pair) classification and regression: TSV I/O, model inputs and metrics.

Input TSV: a header row naming the columns (`sentence` or `sentence1`+`sentence2`, and
`label`), or no header with 2 (sentence, label) or 3 (sentence1, sentence2, label) columns.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from scipy import stats

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


def write_table(table: TsvTable, predictions: Sequence[str], path: str) -> None:
  """The input rows with a `prediction` column appended (header too, if it had one)."""
  tmp = path + ".partial"
  with open(tmp, "w", encoding="utf-8") as f:
    if table.header is not None:
      f.write("\t".join(table.header + ["prediction"]) + "\n")
    for row, prediction in zip(table.rows, predictions):
      f.write("\t".join(row + [str(prediction)]) + "\n")
  os.replace(tmp, path)


def write_rows(path: str, header: list[str], rows: list[list[str]]) -> None:
  tmp = path + ".partial"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\t".join(header) + "\n")
    for row in rows:
      f.write("\t".join(row) + "\n")
  os.replace(tmp, path)


# --- a file prepared for the model, its predictions, their scores --------------------------

class ClassifyInputs:
  """A TSV's rows as padded model inputs; predictions are label names (regression: numbers
  written with 6 significant digits)."""

  def __init__(self, tokenizer, max_seq_length: int, labels, path: str, need_label: bool,
               regression: bool = False):
    self.table = read_table(path, need_label=need_label)
    self.labels, self.regression = labels, regression
    a, b = self.table.texts
    rows = tokenizer.encode_inputs(list(zip(a, b if b is not None else [None] * len(a))),
                                   max_seq_length)
    self.arrays = {k: stack_padded([r[k] for r in rows], max_seq_length,
                                   tokenizer.pad_id if k == "input_ids" else 0)
                   for k in ("input_ids", "segment_ids", "input_mask")}

  def predictions(self, outputs) -> list[str]:
    logits = outputs["logits"]
    if self.regression:
      return [f"{v:.6g}" for v in logits[:, 0].tolist()]
    return [self.labels[i] for i in np.argmax(logits, axis=-1).tolist()]

  def gold(self) -> list[str]:
    return [g.strip() for g in self.table.column("label")]

  def score(self, predicted) -> dict[str, float]:
    gold = self.gold()
    if self.regression:
      return regression_metrics(parse_float(self.table, gold, "label"),
                                [float(p) for p in predicted])
    return classification_metrics(gold, predicted)

  def write(self, predicted, path: str) -> None:
    write_table(self.table, predicted, path)


def score_files(predictions: str, gold: str | None, regression: bool | None = None
                ) -> dict[str, float]:
  """Scores of a `predict` TSV (its last column) against `gold`'s label column, or against
  its own label column. `regression=None`: regression metrics when labels or predictions are
  not all integers."""
  table = read_table(predictions, need_label=gold is None)
  if not table.has("prediction") and table.header is not None:
    raise FlaxbertError(f"{predictions}:1: missing column 'prediction'")
  predicted = [r[-1].strip() for r in table.rows]
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


def macro_f1(gold: Sequence, pred: Sequence) -> float:
  """Mean per-class F1 over the classes in gold or predictions (sklearn's `average="macro"`)."""
  gold, pred = np.asarray(gold), np.asarray(pred)
  scores = []
  for c in sorted(set(gold.tolist()) | set(pred.tolist())):
    tp = np.sum((gold == c) & (pred == c))
    fp = np.sum((gold != c) & (pred == c))
    fn = np.sum((gold == c) & (pred != c))
    denom = 2 * tp + fp + fn
    scores.append(2 * tp / denom if denom else 0.0)
  return float(np.mean(scores)) if scores else 0.0


def matthews(gold: Sequence, pred: Sequence) -> float:
  """Multiclass Matthews correlation (Gorodkin's R_K, as sklearn's matthews_corrcoef)."""
  gold, pred = np.asarray(gold), np.asarray(pred)
  classes = sorted(set(gold.tolist()) | set(pred.tolist()))
  index = {c: i for i, c in enumerate(classes)}
  confusion = np.zeros((len(classes), len(classes)), np.float64)
  for g, p in zip(gold.tolist(), pred.tolist()):
    confusion[index[g], index[p]] += 1
  t, p = confusion.sum(axis=1), confusion.sum(axis=0)
  c, s = np.trace(confusion), confusion.sum()
  cov_ytyp = c * s - t @ p
  cov_ypyp = s * s - p @ p
  cov_ytyt = s * s - t @ t
  denom = math.sqrt(cov_ytyt * cov_ypyp)
  return float(cov_ytyp / denom) if denom else 0.0


def classification_metrics(gold: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
  return {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred),
          "matthews": matthews(gold, pred)}


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
