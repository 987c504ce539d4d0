"""`flaxbert.pipeline`: a saved model as a Python function over texts.

    classify = pipeline("classify", "runs/sentiment/best")
    classify(["a fine film", "dull"])   # [{"label", "score", "scores": {label: prob}}, ...]
    pipeline("regression", path)(texts)   # [{"score"}, ...]
    pipeline("ner", path)(texts)          # per text [{"type", "text", "start", "end", "score"}]
    pipeline("qa", path)([(question, context), {"question": q, "context": c}])
                                          # [{"answer", "score", "start", "end"}, ...]
    pipeline("embed", path)(texts)        # N x H float32 sentence vectors (the bundle's pooling)
    pipeline("fill-mask", path)(texts)    # per text, per [MASK]: [{"token", "score", ...}]

The fine-tuned tasks run through the task code `flaxbert predict` runs (flaxbert/tasks/): the
bundle's finetune.json settings (keyword settings override them, as predict's flags do), the
same ids, the same decoding, so a text gets the prediction predict writes for it. Only the
batching differs: rows are sorted by length and each batch padded to a bucket length
(inference/bucketing.py); rows never see each other's padding, so the outputs agree with
predict's to float32 rounding (tests/test_pipeline.py holds them to it).

Offsets are characters, end exclusive: ner's into the text as given (its words are the text
split on whitespace, as a CoNLL file's words), qa's into the context (an unanswered v2.0
question: answer "", start = end = 0). Scores are probabilities: classify's the softmax over
the labels, ner's the mean over an entity's words of its tag's probability, qa's the answer's
share of the softmax over the n best answers (run_squad's n-best probability).

Every name in PIPELINES is one entry: a function (path, *, batch_size, max_length,
**settings) -> a callable over a list of inputs that returns a list of results (a single
input, not in a list, gives a single result).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import numpy as np

from flaxbert import bundle as bundle_lib
from flaxbert.errors import FlaxbertError
from flaxbert.inference import bucketing
from flaxbert.inference.embed import sentence_embeddings
from flaxbert.inference.fill_mask import fill_mask
from flaxbert.tasks import ner
from flaxbert.tasks.predict import TaskSettings, load_for_task
from flaxbert.training.step import make_predict_step

# Settings a task pipeline takes as keywords (the rest of TaskSettings the pipeline fixes:
# the task, max_length as its own argument; seq2seq's are for `flaxbert predict`).
_SETTINGS = tuple(f.name for f in dataclasses.fields(TaskSettings)
                  if f.name not in ("task", "max_seq_length", "regression",
                                    "max_output_length", "beam", "alpha"))


class TaskPipeline:
  """A fine-tuned bundle of a task of the registry (classify, regression, ner, qa) as a
  callable; built once, it keeps its compiled shapes (one per bucket length) across calls."""

  def __init__(self, task: str, path: str, *, batch_size: int = 32,
               max_length: int | None = None, **settings):
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
      raise FlaxbertError(f"unknown setting {unknown[0]!r} for the {task} pipeline (known: "
                          f"{', '.join(_SETTINGS)})")
    if batch_size < 1:
      raise FlaxbertError(f"batch_size must be positive, got {batch_size}")
    self.bundle, self.settings, self.task = load_for_task(path, task, max_seq_length=max_length,
                                                          **settings)
    self.batch_size = batch_size
    self._results = TASK_RESULTS[self.task.name]
    self._step = bucketing.CompiledCache(make_predict_step(self.bundle.model),
                                         self.bundle.params)
    self._buckets = bucketing.default_buckets(self.settings.max_seq_length)

  def __call__(self, inputs):
    single = isinstance(inputs, str) or (self.task.name == "qa" and (
        isinstance(inputs, dict) or (isinstance(inputs, tuple) and len(inputs) == 2
                                     and all(isinstance(x, str) for x in inputs))))
    items = [inputs] if single else list(inputs)
    if not items:
      return []
    bundle = self.bundle
    prepared = self.task.text_inputs(bundle.tokenizer, self.settings, bundle.labels, items)
    predicted = prepared.predictions(self._run(prepared.arrays))
    results = self._results(prepared, predicted, items)
    return results[0] if single else results

  def _run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's outputs over padded N x S inputs, run in length buckets: per-token
    outputs come back N x S (zero past each row's length), the others N x ..."""
    per_token = self.task.per_token_outputs
    out = bucketing.run_bucketed(self._step, bucketing.unpadded_rows(arrays),
                                 self.batch_size, self._buckets, per_token=per_token,
                                 pad_values={"input_ids": self.bundle.tokenizer.pad_id})
    return bucketing.stack_outputs(out, per_token, arrays["input_ids"].shape[1])


# --- results per task: what the task's predictions say, as plain Python values ----------------

def _classify_results(prepared, predicted, items) -> list[dict]:
  out = []
  for label, probabilities in zip(predicted, predicted.probabilities):
    scores = dict(zip(predicted.label_names, probabilities.tolist()))
    out.append({"label": label, "score": scores[label], "scores": scores})
  return out


def _regression_results(prepared, predicted, items) -> list[dict]:
  return [{"score": value} for value in predicted.values.tolist()]


def _ner_results(prepared, predicted, items) -> list[list[dict]]:
  return [ner.entity_spans(sentence.words, tags, probabilities, text)
          for sentence, tags, probabilities, text in zip(prepared.sentences, predicted,
                                                         predicted.probabilities, items)]


def _qa_results(prepared, predicted, items) -> list[dict]:
  out = []
  for question in prepared.questions:
    answer = predicted[question["id"]]
    # The chosen answer's n-best entry (texts are distinct there); none when nothing valid
    # was found in v1.1 (answer "").
    entry = next((e for e in predicted.nbest[question["id"]] if e["text"] == answer), None)
    out.append({"answer": answer, "score": entry["probability"] if entry else 0.0,
                "start": entry["start"] if entry else 0, "end": entry["end"] if entry else 0})
  return out


class BundlePipeline:
  """A bundle loaded once for `sentence_embeddings` or `fill_mask` (inference/embed.py,
  inference/fill_mask.py), which batch by length and keep their compiled shapes per bundle;
  `settings` are that function's keywords (embed: pooling, normalize, layers; fill-mask:
  top_k)."""

  def __init__(self, function: Callable, path: str, *, batch_size: int = 32,
               max_length: int | None = None, **settings):
    self._function, self._settings = function, settings
    self._bundle = bundle_lib.load(str(path))
    self._settings.update(batch_size=batch_size, max_length=max_length)
    function(self._bundle, [], **self._settings)   # settings checked now, not at first call

  def __call__(self, texts):
    return self._function(self._bundle, texts, **self._settings)


# Task name -> (prepared inputs, their predictions, the inputs as given) -> results.
TASK_RESULTS: dict[str, Callable[[Any, Any, Sequence], list]] = {
    "classify": _classify_results, "regression": _regression_results, "ner": _ner_results,
    "qa": _qa_results}

# Task name -> (path, *, batch_size, max_length, **settings) -> callable over inputs.
PIPELINES: dict[str, Callable[..., Callable]] = {
    "classify": functools.partial(TaskPipeline, "classify"),
    "regression": functools.partial(TaskPipeline, "regression"),
    "ner": functools.partial(TaskPipeline, "ner"),
    "qa": functools.partial(TaskPipeline, "qa"),
    "embed": functools.partial(BundlePipeline, sentence_embeddings),
    "fill-mask": functools.partial(BundlePipeline, fill_mask),
}


def pipeline(task: str, path: str, *, batch_size: int = 32, max_length: int | None = None,
             **settings) -> Callable:
  """A callable over texts for the model at `path` (see the module docstring for each task's
  inputs and results). `max_length`: input tokens (default: the fine-tune's); `settings`:
  the task's own (qa: n_best, max_answer_length, null_threshold, doc_stride,
  max_query_length), default the fine-tune's. Unknown tasks and settings are one-line
  errors."""
  if task not in PIPELINES:
    raise FlaxbertError(f"unknown pipeline task {task!r} (known: {', '.join(PIPELINES)})")
  return PIPELINES[task](path, batch_size=batch_size, max_length=max_length, **settings)
