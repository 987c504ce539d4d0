"""Running a fine-tuned model over a task's input file, and scoring predictions against gold.

One dispatch entry per task (PREDICTORS / SCORERS), so another task (seq2seq) is a new entry.
Used by training-time dev evaluation, `flaxbert predict` and `flaxbert evaluate` alike, so the
three agree exactly.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json
from flaxbert.tasks import classify, ner, squad

SETTINGS_FILE = "finetune.json"   # beside a fine-tuned bundle's config.json


@dataclasses.dataclass(frozen=True)
class TaskSettings:
  task: str                      # classify | ner | qa
  max_seq_length: int = 128
  regression: bool = False
  doc_stride: int = 128
  max_query_length: int = 64
  max_answer_length: int = 30
  n_best: int = 20
  null_threshold: float | None = None   # None: SQuAD v1.1 (always answer)

  @classmethod
  def of_bundle(cls, path: str, **overrides) -> "TaskSettings":
    stored = {}
    if os.path.isfile(os.path.join(path, SETTINGS_FILE)):
      stored = read_json(os.path.join(path, SETTINGS_FILE))
    stored.update({k: v for k, v in overrides.items() if v is not None})
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in stored.items() if k in fields})


class Runner:
  """The model's deterministic outputs over padded numpy arrays, in fixed-size batches
  (one compiled shape) sharded over the mesh's data axes."""

  def __init__(self, model, mesh, batch_size: int = 64, show_progress: bool = False):
    from flaxbert import sharding as mesh_lib
    from flaxbert.training.step import make_predict_step
    dp = mesh_lib.data_parallel_size(mesh)
    self.batch_size = -(-batch_size // dp) * dp
    self.mesh = mesh
    self._step = jax.jit(make_predict_step(model))
    self._mesh_lib = mesh_lib
    self.show_progress = show_progress

  def __call__(self, params, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from flaxbert.progress import progress_bar
    keys = ("input_ids", "segment_ids", "input_mask")
    n = len(arrays["input_ids"])
    outputs: dict[str, list] = {}
    with jax.set_mesh(self.mesh), progress_bar(total=n, desc="predict", unit="row",
                                              disable=not self.show_progress) as bar:
      for start in range(0, n, self.batch_size):
        stop = min(start + self.batch_size, n)
        pad = self.batch_size - (stop - start)
        batch = {k: np.pad(arrays[k][start:stop], ((0, pad), (0, 0))) for k in keys}
        out = jax.device_get(self._step(params, self._mesh_lib.global_batch(batch, self.mesh)))
        for k, v in out.items():
          outputs.setdefault(k, []).append(np.asarray(v)[:stop - start])
        bar.update(stop - start)
    return {k: np.concatenate(v) for k, v in outputs.items()}


# --- per task: prepared inputs -> predictions -> file -------------------------------------

class ClassifyTask:
  def __init__(self, tokenizer, settings: TaskSettings, labels, path: str, need_label: bool):
    self.table = classify.read_table(path, need_label=need_label)
    self.labels, self.regression = labels, settings.regression
    a, b = self.table.texts
    a_ids = tokenizer.encode_batch(a)
    b_ids = tokenizer.encode_batch(b) if b is not None else [None] * len(a)
    n, s = len(a), settings.max_seq_length
    self.arrays = {"input_ids": np.full((n, s), tokenizer.pad_id, np.int32),
                   "segment_ids": np.zeros((n, s), np.int32),
                   "input_mask": np.zeros((n, s), np.int32)}
    for i, (x, y) in enumerate(zip(a_ids, b_ids)):
      ids, segments = tokenizer.build_inputs(x, y, s)
      self.arrays["input_ids"][i, :len(ids)] = ids
      self.arrays["segment_ids"][i, :len(ids)] = segments
      self.arrays["input_mask"][i, :len(ids)] = 1
    if need_label and not self.regression:
      known = set(labels)
      for number, label in zip(self.table.numbers, self.table.column("label")):
        if label.strip() not in known:
          raise FlaxbertError(f"{path}:{number}: unknown label {label.strip()!r} (known: "
                              f"{', '.join(labels)})")

  def predictions(self, outputs) -> list[str]:
    logits = outputs["logits"]
    if self.regression:
      return [f"{v:.6g}" for v in logits[:, 0].tolist()]
    return [self.labels[i] for i in np.argmax(logits, axis=-1).tolist()]

  def score(self, predicted) -> dict[str, float]:
    gold = [g.strip() for g in self.table.column("label")]
    if self.regression:
      return classify.regression_metrics(classify.parse_float(self.table, gold, "label"),
                                         [float(p) for p in predicted])
    return classify.classification_metrics(gold, predicted)

  def write(self, predicted, path: str) -> None:
    classify.write_table(self.table, predicted, path)


class NerTask:
  def __init__(self, tokenizer, settings: TaskSettings, labels, path: str, need_label: bool):
    self.sentences = ner.read_conll(path, need_tags=need_label)
    self.labels = labels
    if need_label:
      known = set(labels)
      for sentence in self.sentences:
        for offset, tag in enumerate(sentence.tags):
          if tag not in known:
            raise FlaxbertError(f"{path}:{sentence.number + offset}: unknown tag {tag!r} "
                                f"(known: {', '.join(labels)})")
    self.arrays, self.firsts = ner.encode_sentences(tokenizer, self.sentences,
                                                    settings.max_seq_length)

  def predictions(self, outputs):
    return ner.decode(outputs["logits"], self.firsts, self.sentences, self.labels)

  def score(self, predicted) -> dict[str, float]:
    return ner.entity_scores([s.tags for s in self.sentences], predicted)

  def write(self, predicted, path: str) -> None:
    ner.write_predictions(path, self.sentences, predicted)


class QaTask:
  def __init__(self, tokenizer, settings: TaskSettings, labels, path: str, need_label: bool):
    from flaxbert.data.finetuning import squad_examples
    if need_label:
      squad.check_answers(path)
    self.settings = settings
    self.questions = squad.read_questions(path)
    windows = [w for _, w in squad_examples(tokenizer, self.questions, settings.max_seq_length,
                                            settings.doc_stride, settings.max_query_length)]
    self.window_ids = [w["example_id"] for w in windows]
    self.arrays = squad.window_arrays(windows, settings.max_seq_length, tokenizer.pad_id)

  def predictions(self, outputs) -> dict[str, str]:
    s = self.settings
    return squad.best_answers(self.questions, self.window_ids, self.arrays,
                              outputs["start_logits"], outputs["end_logits"], n_best=s.n_best,
                              max_answer_length=s.max_answer_length,
                              null_threshold=s.null_threshold)

  def score(self, predicted) -> dict[str, float]:
    return squad.score(squad.gold_answers(self.questions), predicted)

  def write(self, predicted, path: str) -> None:
    squad.write_predictions(path, predicted)


PREDICTORS: dict[str, type] = {"classify": ClassifyTask, "ner": NerTask, "qa": QaTask}
EXTENSIONS = {"classify": "tsv", "ner": "conll", "qa": "json"}
HEADS = {"classify": ("classification", "regression"), "ner": ("tagging",), "qa": ("span_qa",)}


def predict_file(bundle_path: str, task: str, input_path: str, output_path: str, *,
                 batch_size: int = 64, mesh_spec: str | None = None, show_progress: bool = True,
                 **overrides) -> int:
  """Writes `output_path` for `input_path` with the fine-tuned bundle; returns rows done."""
  from flaxbert import bundle as bundle_lib
  from flaxbert import sharding as mesh_lib
  if task not in PREDICTORS:
    raise FlaxbertError(f"unknown task {task!r} (known: {', '.join(PREDICTORS)})")
  out_dir = os.path.dirname(os.path.abspath(output_path))
  if not os.path.isdir(out_dir):
    raise FlaxbertError(f"{out_dir}: output directory does not exist")
  bundle = bundle_lib.load(bundle_path)
  if bundle.head not in HEADS[task]:
    raise FlaxbertError(f"{bundle_path}: a {bundle.head!r} bundle cannot predict {task!r} "
                        f"(needs a {' or '.join(HEADS[task])} head: fine-tune one first)")
  if task != "qa" and bundle.head != "regression" and not bundle.labels:
    raise FlaxbertError(f"{bundle_path}: the bundle records no label names")
  settings = TaskSettings.of_bundle(bundle_path, task=task,
                                    regression=bundle.head == "regression", **overrides)
  if settings.max_seq_length > bundle.config.max_position_embeddings:
    raise FlaxbertError(f"--max-length {settings.max_seq_length} exceeds the model's "
                        f"{bundle.config.max_position_embeddings} positions")
  prepared = PREDICTORS[task](bundle.tokenizer, settings, bundle.labels, input_path,
                              need_label=False)
  mesh = mesh_lib.make_mesh(mesh_spec)
  runner = Runner(bundle.model, mesh, batch_size, show_progress)
  params = jax.device_put(bundle.params, mesh_lib.replicated(mesh))
  predicted = prepared.predictions(runner(params, prepared.arrays))
  prepared.write(predicted, output_path)
  return len(predicted)


# --- scoring written files -------------------------------------------------------------------

def _score_classify(predictions: str, gold: str | None) -> dict[str, float]:
  table = classify.read_table(predictions, need_label=gold is None)
  if not table.has("prediction") and table.header is not None:
    raise FlaxbertError(f"{predictions}:1: missing column 'prediction'")
  predicted = [r[-1].strip() for r in table.rows]
  if gold is None:
    if table.header is None:   # no header: the column before the prediction is the label
      labels = [r[-2].strip() for r in table.rows]
    else:
      labels = [g.strip() for g in table.column("label")]
  else:
    gold_table = classify.read_table(gold, need_label=True)
    labels = [g.strip() for g in gold_table.column("label")]
    if len(labels) != len(predicted):
      raise FlaxbertError(f"{predictions}: {len(predicted)} rows but {gold} has {len(labels)}")
  try:
    gold_values = [float(x) for x in labels]
    numeric = not all(x.lstrip("-").isdigit() for x in labels) or \
        not all(x.lstrip("-").isdigit() for x in predicted)
    if numeric:
      return classify.regression_metrics(gold_values, [float(x) for x in predicted])
  except ValueError:
    pass
  return classify.classification_metrics(labels, predicted)


def _score_ner(predictions: str, gold: str | None) -> dict[str, float]:
  gold_tags, predicted = ner.read_predictions(predictions, gold)
  return ner.entity_scores(gold_tags, predicted)


def _score_qa(predictions: str, gold: str | None) -> dict[str, float]:
  if gold is None:
    raise FlaxbertError("qa: pass the gold SQuAD JSON with --gold")
  squad.check_answers(gold)
  return squad.score(squad.gold_answers(squad.read_questions(gold)),
                     squad.read_predictions(predictions))


SCORERS: dict[str, Callable[[str, str | None], dict]] = {
    "classify": _score_classify, "ner": _score_ner, "qa": _score_qa}


def score_file(task: str, predictions: str, gold: str | None = None) -> dict[str, float]:
  if task not in SCORERS:
    raise FlaxbertError(f"unknown task {task!r} (known: {', '.join(SCORERS)})")
  return SCORERS[task](predictions, gold)
