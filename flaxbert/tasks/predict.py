"""`flaxbert predict` and `flaxbert evaluate` for every task alike, through the registry: a
fine-tuned bundle over a task's file, and predictions scored against gold.

The files are read as fine-tuning reads them and the model runs through the same code as
training-time dev scoring, so the three agree exactly.
"""

from __future__ import annotations

import dataclasses
import os

from flaxbert import bundle as bundle_lib
from flaxbert import sharding as mesh_lib
from flaxbert.errors import FlaxbertError
from flaxbert.tasks import registry



@dataclasses.dataclass(frozen=True)
class TaskSettings:
  task: str                      # a registry name: classify | regression | ner | qa | seq2seq
  max_seq_length: int = 128      # seq2seq: source tokens
  regression: bool = False       # kept for bundles written when regression was classify's flag
  doc_stride: int = 128
  max_query_length: int = 64
  max_answer_length: int = 30
  n_best: int = 20
  null_threshold: float | None = None   # None: SQuAD v1.1 (always answer)
  max_output_length: int = 64    # seq2seq: generated tokens at most
  beam: int = 1                  # seq2seq: beam size (1: greedy)
  alpha: float = 0.6             # seq2seq: length penalty exponent

  @classmethod
  def of_dict(cls, stored: dict | None, **overrides) -> "TaskSettings":
    """Stored settings (a finetune.json's, or a serving export's copy of them) under
    `overrides` (None keeps the stored value); unknown keys are ignored."""
    stored = {**(stored or {}), **{k: v for k, v in overrides.items() if v is not None}}
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in stored.items() if k in fields})


def load_for_task(bundle_path: str, task: str, **overrides):
  """(bundle, settings, the task that serves it) for predicting `task` with a fine-tuned
  bundle: its finetune.json settings under `overrides` (None keeps the bundle's own), checked
  by the task's `for_bundle`. `flaxbert predict` and flaxbert.pipeline both start here."""
  wanted = registry.get(task)
  bundle = bundle_lib.load(bundle_path)   # its finetune.json read as bundle.task_settings
  settings = TaskSettings.of_dict(bundle.task_settings, task=task, **overrides)
  served = wanted.for_bundle(bundle, bundle_path, settings)
  settings = dataclasses.replace(settings, task=served.name,
                                 regression=served.head == "regression")
  return bundle, settings, served


def predict_file(bundle_path: str, task: str, input_path: str, output_path: str, *,
                 batch_size: int = 64, mesh_spec: str | None = None, show_progress: bool = True,
                 **overrides) -> int:
  """Writes `output_path` for `input_path` with the fine-tuned bundle (and what the task
  writes beside it: ner's spans, qa's n-best answers and null odds); returns rows done.
  `overrides`: TaskSettings fields (None keeps the bundle's own)."""
  registry.get(task)   # an unknown task name: its one line before any file is looked at
  out_dir = os.path.dirname(os.path.abspath(output_path))
  if not os.path.isdir(out_dir):
    raise FlaxbertError(f"{out_dir}: output directory does not exist")
  if batch_size < 1:
    raise FlaxbertError(f"--batch-size must be positive, got {batch_size}")
  bundle, settings, served = load_for_task(bundle_path, task, **overrides)
  inputs = served.inputs(bundle.tokenizer, settings, bundle.labels, input_path, need_label=False)
  mesh = mesh_lib.make_mesh(mesh_spec)
  predict = served.make_predict(bundle.model, mesh, batch_size, show_progress)
  predicted = predict(served.place(bundle.params, mesh), inputs)
  inputs.write(predicted, output_path)
  return len(predicted)


def score_file(task: str, predictions: str, gold: str | None = None,
               null_odds: str | None = None) -> dict:
  """The task's scores of a predictions file; `null_odds` (qa, SQuAD v2.0): the
  null_odds.json predict wrote, for the best-threshold scores."""
  return registry.get(task).score_file(predictions, gold, null_odds)
