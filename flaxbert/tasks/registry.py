"""The fine-tuning tasks: one object each, under one name used everywhere (`flaxbert finetune`,
`predict --task`, `evaluate --task`, results.json's "task", a bundle's finetune.json).

    name        model head      data builder     main metric  predictions
    classify    classification  classification   accuracy     .tsv
    regression  regression      regression       pearson      .tsv  (finetune classify --regression)
    ner         tagging         tagging          f1           .conll
    qa          span_qa         squad            f1           .json
    seq2seq     seq2seq         seq2seq          bleu         .txt

A task checks and subsamples its training files and finds their label names
(`prepare_files`: the one place dev labels are checked against the training labels), prepares
a file for its model (`inputs`; texts in memory: `text_inputs`, for flaxbert.pipeline), runs
the model over it (`make_predict`), scores predictions (`inputs(...).score`, `score_file`)
and gives the dev scores of the trivial baseline a model must beat (`baseline`).

Score dicts hold floats (the metrics a run logs) and richer entries beside them: classify's
`confusion_matrix` and `per_class`, ner's `per_class`, qa's counts.
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Callable, Iterable

import jax
import numpy as np

from flaxbert import sharding as mesh_lib
from flaxbert.data import readers
from flaxbert.errors import FlaxbertError
from flaxbert.tasks import SPECS, classify, ner, seq2seq, squad
from flaxbert.tasks.runner import Runner


@dataclasses.dataclass(frozen=True)
class PreparedFiles:
  """Training and dev files after checks and subsampling (subsets live in WORKDIR/data/)."""
  train: str
  dev: str
  labels: list[str] | None          # label / tag names the head predicts (classify, ner)
  train_labels: list[str]           # training labels as read (classify, regression)
  version_2: bool | None = None     # qa: the files hold SQuAD v2.0 (unanswerable) questions


@dataclasses.dataclass(frozen=True)
class Task:
  name: str                      # the one name: CLI --task, results.json, finetune.json
  head: str                      # model head (models/factory.py HEADS, or seq2seq)
  data: str                      # builder name for data.pipeline.finetune_data
  train_keys: tuple[str, ...]    # batch fields the training step reads besides the inputs
  metric: str                    # main dev metric (higher is better)
  extension: str                 # of prediction files

  # --- fine-tuning files ---------------------------------------------------------------------

  def prepare_files(self, train: str, dev: str, workdir: str, *,
                    max_train_examples: int | None = None, max_dev_examples: int | None = None,
                    seed: int = 0, known_labels: list[str] | None = None) -> PreparedFiles:
    """Checks both files, keeps a seeded random subset of the training examples and the first
    dev examples when asked (written under `workdir`/data/), and reads the label names. Dev
    labels must be training labels, or `known_labels` when given (a distillation teacher's:
    its head predicts those, whatever the training subset holds)."""
    out = os.path.join(workdir, "data")
    os.makedirs(out, exist_ok=True)
    kept = {}
    for split, path, keep, random_order in (("train", train, max_train_examples, True),
                                            ("dev", dev, max_dev_examples, False)):
      examples = self._read(path)
      if not examples:
        raise FlaxbertError(f"{path}: no {self._unit}")
      chosen = _subset_indices(len(examples), keep, seed, random_order)
      if chosen is not None:
        examples = [examples[i] for i in chosen]
        subset = os.path.join(out, f"{split}_subset.{self._subset_extension}")
        self._write_subset(path, examples, subset)
        path = subset
      kept[split] = (path, examples)
    return self._labels(kept, original_dev=dev, known=known_labels)

  _unit = "examples"
  _subset_extension = "txt"

  def _read(self, path: str) -> list:
    raise NotImplementedError

  def _write_subset(self, path: str, examples: list, subset: str) -> None:
    raise NotImplementedError

  def _labels(self, kept: dict, original_dev: str, known=None) -> PreparedFiles:
    return PreparedFiles(kept["train"][0], kept["dev"][0], None, [])

  def count(self, path: str) -> int:
    """Examples in a file (questions, sentences, rows, pairs)."""
    return len(self._read(path))

  def data_settings(self, labels: list[str] | None, settings) -> dict:
    """Keyword settings of `finetune_data` beyond max_seq_length."""
    return {"labels": labels} if labels else {}

  # --- predicting and scoring ----------------------------------------------------------------

  def for_bundle(self, bundle, path: str, settings) -> "Task":
    """The task that serves `bundle` (classify serves regression bundles too), after checking
    the bundle can: its head, its label names, its positions."""
    if bundle.head != self.head:
      raise FlaxbertError(f"{path}: a {bundle.head!r} bundle cannot predict {self.name!r} "
                          f"(needs a {self.head} head: fine-tune one first)")
    if settings.max_seq_length > bundle.config.max_position_embeddings:
      raise FlaxbertError(f"--max-length {settings.max_seq_length} exceeds the model's "
                          f"{bundle.config.max_position_embeddings} positions")
    return self

  def inputs(self, tokenizer, settings, labels, path: str, *, need_label: bool):
    """`path` prepared for the model: `.arrays` (padded N x max_seq_length model inputs),
    `.predictions(outputs)`, `.score(predicted)`, `.write(predicted, path)`; `need_label`: the
    gold labels must be there (dev files)."""
    raise NotImplementedError

  def text_inputs(self, tokenizer, settings, labels, texts: list):
    """Like `inputs`, for inputs given in memory (the task's pipeline inputs, checked)."""
    raise FlaxbertError(f"{self.name!r} has no pipeline")

  # Model outputs with a position axis (axis 1): the length-bucketed pipeline cuts them to
  # each row's length and pads them back to max_seq_length for `.predictions`.
  per_token_outputs = ()

  def make_predict(self, model, mesh, batch_size: int, show_progress: bool = False
                   ) -> Callable:
    """(params, inputs) -> predictions, compiled once and reused across calls."""
    runner = Runner(model, mesh, batch_size, show_progress)
    return lambda params, inputs: inputs.predictions(runner(params, inputs.arrays))

  def place(self, params, mesh):
    """Host parameters placed for `make_predict`'s function."""
    return jax.device_put(params, mesh_lib.replicated(mesh))

  def score_file(self, predictions: str, gold: str | None, null_odds: str | None = None
                 ) -> dict:
    raise NotImplementedError

  def _no_null_odds(self, null_odds: str | None) -> None:
    if null_odds is not None:
      raise FlaxbertError(f"--null-odds applies to qa only, not {self.name!r}")

  def baseline(self, dev, prepared: PreparedFiles) -> dict[str, float]:
    """Dev scores of the trivial baseline, `dev` being the dev file's `inputs`."""
    raise NotImplementedError


def _subset_indices(n: int, keep: int | None, seed: int, random_order: bool) -> list[int] | None:
  if keep is None or keep >= n:
    return None
  if not random_order:
    return list(range(keep))
  return sorted(random.Random(seed).sample(range(n), keep))


def check_dev_labels(dev: str, numbered: Iterable[tuple[int, str]], known: Iterable[str],
                     what: str) -> None:
  """Every dev label (with its line number) must be one the training file has: the head
  cannot predict any other, and scoring one would silently count it wrong."""
  known = set(known)
  for number, label in numbered:
    if label not in known:
      raise FlaxbertError(f"{dev}:{number}: unknown {what} {label!r} (the training {what}s "
                          f"are {', '.join(sorted(known))})")


# --- the tasks -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ClassifyTask(Task):
  """Sentence (pair) classification, or regression: TSV files (classify.py)."""
  _unit = "rows"
  _subset_extension = "tsv"

  @property
  def regression(self) -> bool:
    return self.head == "regression"

  def _read(self, path):
    table = classify.read_table(path, need_label=True)
    return [(number, row, table) for number, row in zip(table.numbers, table.rows)]

  def _write_subset(self, path, examples, subset):
    classify.write_rows(subset, examples[0][2].columns, [row for _, row, _ in examples])

  def _labels(self, kept, original_dev, known=None):
    def labels(split):
      examples = kept[split][1]
      column = examples[0][2].columns.index("label")
      return [(number, row[column].strip()) for number, row, _ in examples]
    train, dev = labels("train"), labels("dev")
    train_labels = [label for _, label in train]
    if self.regression:
      for (path, examples), numbered in ((kept["train"], train), (kept["dev"], dev)):
        table = examples[0][2]
        for number, value in numbered:
          if not _is_number(value):
            raise FlaxbertError(f"{table.path}:{number}: label {value!r} is not a number")
      return PreparedFiles(kept["train"][0], kept["dev"][0], None, train_labels)
    check_dev_labels(original_dev, dev, known or train_labels, "label")
    return PreparedFiles(kept["train"][0], kept["dev"][0], sorted(set(train_labels)),
                         train_labels)

  def data_settings(self, labels, settings):
    return {} if self.regression else {"labels": labels}

  def for_bundle(self, bundle, path, settings):
    if self.name == "classify" and bundle.head == "regression":
      return REGRESSION.for_bundle(bundle, path, settings)
    task = super().for_bundle(bundle, path, settings)
    if not self.regression and not bundle.labels:
      raise FlaxbertError(f"{path}: the bundle records no label names")
    return task

  def inputs(self, tokenizer, settings, labels, path, *, need_label):
    return classify.ClassifyInputs(tokenizer, settings.max_seq_length, labels, path,
                                   need_label, regression=self.regression)

  def text_inputs(self, tokenizer, settings, labels, texts):
    return classify.ClassifyInputs.of_texts(tokenizer, settings.max_seq_length, labels,
                                            text_pairs(texts), regression=self.regression)

  def score_file(self, predictions, gold, null_odds=None):
    self._no_null_odds(null_odds)
    # classify keeps guessing regression from numeric labels, as before the regression task
    return classify.score_files(predictions, gold, regression=True if self.regression else None)

  def baseline(self, dev, prepared):
    if self.regression:   # always the mean training value
      mean = float(np.mean([float(x) for x in prepared.train_labels]))
      return dev.score([str(mean)] * len(dev.table.rows))
    return classify.majority_baseline(prepared.train_labels, dev.gold())


def text_pairs(texts) -> list[tuple[str, str | None]]:
  """Inputs given in memory, each a text or a (text_a, text_b) pair, as (text_a, text_b or
  None) rows; anything else is a one-line error naming the input."""
  rows = []
  for i, text in enumerate(texts):
    if isinstance(text, str):
      rows.append((text, None))
    elif isinstance(text, (tuple, list)) and len(text) == 2 and all(
        isinstance(t, str) for t in text):
      rows.append(tuple(text))
    else:
      raise FlaxbertError(f"input {i}: expected a text or a (text_a, text_b) pair of texts, "
                          f"got {type(text).__name__}")
  return rows


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


@dataclasses.dataclass(frozen=True)
class NerTask(Task):
  """Word tagging (BIO) of CoNLL files (ner.py); the baseline tags everything "O"."""
  _unit = "sentences"
  _subset_extension = "conll"

  def _read(self, path):
    return ner.read_conll(path, need_tags=True)

  def _write_subset(self, path, examples, subset):
    with open(subset + ".partial", "w", encoding="utf-8") as f:
      for sentence in examples:
        f.write("\n".join(sentence.lines) + "\n\n")
    os.replace(subset + ".partial", subset)

  def _labels(self, kept, original_dev, known=None):
    tags = {t for s in kept["train"][1] for t in s.tags}
    check_dev_labels(original_dev, ((s.number + offset, tag) for s in kept["dev"][1]
                                    for offset, tag in enumerate(s.tags)), known or tags, "tag")
    labels = sorted(tags, key=lambda t: (t != "O", t))   # "O" first: label 0 is outside
    return PreparedFiles(kept["train"][0], kept["dev"][0], labels, [])

  def for_bundle(self, bundle, path, settings):
    task = super().for_bundle(bundle, path, settings)
    if not bundle.labels:
      raise FlaxbertError(f"{path}: the bundle records no label names")
    return task

  per_token_outputs = ("logits",)

  def inputs(self, tokenizer, settings, labels, path, *, need_label):
    return ner.NerInputs(tokenizer, settings.max_seq_length, labels, path, need_label)

  def text_inputs(self, tokenizer, settings, labels, texts):
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise FlaxbertError(f"input {i}: expected a text, got {type(text).__name__}")
    return ner.NerInputs.of_texts(tokenizer, settings.max_seq_length, labels, texts)

  def score_file(self, predictions, gold, null_odds=None):
    self._no_null_odds(null_odds)
    return ner.score_files(predictions, gold)

  def baseline(self, dev, prepared):
    return ner.majority_baseline([s.tags for s in dev.sentences])


@dataclasses.dataclass(frozen=True)
class QaTask(Task):
  """Extractive QA on SQuAD v1.1 / v2.0 JSON (squad.py); the baseline answers nothing."""
  _unit = "questions"
  _subset_extension = "json"

  def _read(self, path):
    squad.check_answers(path)
    return [q["id"] for q in squad.read_questions(path)]

  def _write_subset(self, path, examples, subset):
    squad.write_subset(path, subset, set(examples))

  def _labels(self, kept, original_dev, known=None):
    train, dev = kept["train"][0], kept["dev"][0]
    return PreparedFiles(train, dev, None, [],
                         version_2=squad.version_2(train) or squad.version_2(dev))

  def data_settings(self, labels, settings):
    return {"doc_stride": settings.doc_stride, "max_query_length": settings.max_query_length}

  per_token_outputs = ("start_logits", "end_logits")

  def inputs(self, tokenizer, settings, labels, path, *, need_label):
    return squad.QaInputs(tokenizer, settings, path, need_label)

  def text_inputs(self, tokenizer, settings, labels, texts):
    """(question, context) pairs or {"question", "context"} dicts; ids are their indices."""
    questions = []
    for i, item in enumerate(texts):
      if isinstance(item, dict) and isinstance(item.get("question"), str) and \
          isinstance(item.get("context"), str):
        question, context = item["question"], item["context"]
      elif isinstance(item, (tuple, list)) and len(item) == 2 and all(
          isinstance(t, str) for t in item):
        question, context = item
      else:
        raise FlaxbertError(f"input {i}: expected a (question, context) pair or a dict with "
                            "'question' and 'context' texts")
      questions.append({"id": str(i), "question": question, "context": context,
                        "answers": []})
    return squad.QaInputs.of_questions(tokenizer, settings, questions)

  def score_file(self, predictions, gold, null_odds=None):
    return squad.score_files(predictions, gold, null_odds)

  def baseline(self, dev, prepared):
    return dev.score({q["id"]: "" for q in dev.questions})


@dataclasses.dataclass(frozen=True)
class Seq2SeqTask(Task):
  """Source<TAB>target TSVs for an encoder-decoder (seq2seq.py); the baseline copies the
  source (BLEU of the sources as hypotheses)."""
  _unit = "pairs"
  _subset_extension = "tsv"

  def _read(self, path):
    return list(readers.read_tsv(path, (2,)))

  def _write_subset(self, path, examples, subset):
    with open(subset + ".partial", "w", encoding="utf-8") as f:
      f.writelines("\t".join(fields) + "\n" for _, fields in examples)
    os.replace(subset + ".partial", subset)

  def data_settings(self, labels, settings):
    return {"max_source_length": settings.max_seq_length,
            "max_target_length": settings.max_output_length}

  def for_bundle(self, bundle, path, settings):
    if bundle.head != self.head:
      raise FlaxbertError(f"{path}: a {bundle.head!r} bundle cannot predict {self.name!r} "
                          "(needs an encoder-decoder bundle: `flaxbert finetune seq2seq`)")
    return self

  def inputs(self, tokenizer, settings, labels, path, *, need_label):
    return seq2seq.Seq2SeqInputs(tokenizer, settings, path, need_label)

  def make_predict(self, model, mesh, batch_size, show_progress=False):
    return lambda params, inputs: inputs.translate(model, params, batch_size)

  def place(self, params, mesh):
    return params   # decoding runs on the default device, as `translate` always has

  def score_file(self, predictions, gold, null_odds=None):
    self._no_null_odds(null_odds)
    return seq2seq.score_files(predictions, gold)

  def baseline(self, dev, prepared):
    return dev.score(dev.sources)


def _make(kind: type, name: str, train_keys: tuple[str, ...], extension: str) -> Task:
  head, data, metric = SPECS[name]
  return kind(name, head=head, data=data, train_keys=train_keys, metric=metric,
              extension=extension)


CLASSIFY = _make(ClassifyTask, "classify", ("label",), "tsv")
REGRESSION = _make(ClassifyTask, "regression", ("label",), "tsv")
NER = _make(NerTask, "ner", ("labels",), "conll")
QA = _make(QaTask, "qa", ("start_position", "end_position"), "json")
SEQ2SEQ = _make(Seq2SeqTask, "seq2seq",
                ("source_ids", "source_mask", "target_ids", "target_mask"), "txt")

TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFY, REGRESSION, NER, QA, SEQ2SEQ)}
NAMES: tuple[str, ...] = tuple(TASKS)   # == flaxbert.tasks.NAMES, which the CLI lists


def get(name: str, regression: bool = False) -> Task:
  """The task called `name`; `regression=True` (`finetune classify --regression`) turns
  classify into regression. Unknown names are a one-line error."""
  if name not in TASKS:
    raise FlaxbertError(f"unknown task {name!r} (known: {', '.join(NAMES)})")
  if regression:
    if name not in ("classify", "regression"):
      raise FlaxbertError("--regression applies to classify only")
    return REGRESSION
  return TASKS[name]
