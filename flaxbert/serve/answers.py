"""What `flaxbert serve` answers, per head of the served model: a request's inputs as model
rows, and the model's outputs for those rows as the answers offline inference gives.

    head            input                          answer
    classification  text or [text_a, text_b]       {"label", "score", "scores": {label: p}}
    regression      text or [text_a, text_b]       {"score"}
    tagging         text                           [{"type", "text", "start", "end", "score"}]
    span_qa         [question, context]            {"answer", "score", "start", "end"}
    encoder         text or [text_a, text_b]       the sentence embedding (a list of floats)
    pretraining     text with [MASK]s              per [MASK]: [{"token", "token_id", "score",
                                                   "sequence"}], best first

The tasks run through the task code `flaxbert predict` runs (registry.text_inputs to prepare,
`.predictions` to decode, flaxbert.pipeline's TASK_RESULTS to say it), embeddings are pooled
as `flaxbert embed` pools them (the export's recorded sentence-transformers default) and
fill-mask candidates are inference/fill_mask.py's, so an answer equals the offline one to
float32 rounding. What runs after the model inside the compiled function (`device`): the
pooling (B x H comes back, not B x S x H) and fill-mask's top-k per position (B x S x k, not
the B x S x vocabulary logits).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert.inference import bucketing, embed, fill_mask
from flaxbert.inference.pipeline import TASK_RESULTS
from flaxbert.tasks import SPECS, registry
from flaxbert.tasks.predict import TaskSettings

# Model head -> task name (classification -> classify, tagging -> ner, span_qa -> qa).
TASK_OF_HEAD = {head: name for name, (head, _, _) in SPECS.items() if name != "seq2seq"}
HEADS = tuple(TASK_OF_HEAD) + ("encoder",) + fill_mask.MLM_HEADS

# (per-row model outputs {name: [one array per row]}) -> one answer per input.
Finish = Callable[[dict], list]


class TaskAnswers:
  """A fine-tuned head (classify, regression, ner, qa): the fine-tune's task settings (as the
  export recorded them) with `max_length` input tokens."""

  def __init__(self, head: str, tokenizer, labels, task_settings: dict | None,
               max_length: int):
    self.task = registry.get(TASK_OF_HEAD[head])
    self.settings = TaskSettings.of_dict(task_settings, task=self.task.name,
                                         max_seq_length=max_length,
                                         regression=self.task.name == "regression")
    self.tokenizer, self.labels = tokenizer, labels
    self.per_token = self.task.per_token_outputs
    self._results = TASK_RESULTS[self.task.name]

  def device(self, outputs: dict, batch: dict) -> dict:
    return outputs

  def prepare(self, items: list) -> tuple[list[dict], Finish]:
    prepared = self.task.text_inputs(self.tokenizer, self.settings, self.labels, items)
    width = prepared.arrays["input_ids"].shape[1]

    def finish(per_row: dict) -> list:
      outputs = bucketing.stack_outputs(per_row, self.per_token, width)
      return self._results(prepared, prepared.predictions(outputs), items)

    return bucketing.unpadded_rows(prepared.arrays), finish

  def too_long(self, items: list) -> tuple[int, int, int] | None:
    """(input, its tokens, the limit) of the first input the model would see cut, or None.
    A qa context is never cut (windows cover it); its question is, at max_query_length."""
    if self.task.name == "qa":
      questions = [item["question"] if isinstance(item, dict) else item[0] for item in items]
      return _first_over([len(q) for q in self.tokenizer.encode_batch(questions)],
                         self.settings.max_query_length)
    if self.task.name == "ner":
      counts = [sum(max(len(p), 1) for p in self.tokenizer.encode_batch(text.split())) + 2
                for text in items]
      return _first_over(counts, self.settings.max_seq_length)
    return _pairs_too_long(self.tokenizer, items, self.settings.max_seq_length)


class EmbedAnswers:
  """An encoder: one sentence embedding per input, pooled as the export records."""

  per_token = ()

  def __init__(self, tokenizer, sentence_embedding: dict | None, max_length: int):
    self.pooling = embed.default_pooling(sentence_embedding)
    self.tokenizer, self.max_length = tokenizer, max_length

  def device(self, outputs: dict, batch: dict) -> dict:
    return {"embeddings": embed.pool(outputs["hidden"], outputs["pooled"],
                                     batch["input_mask"], self.pooling)}

  def prepare(self, items: list) -> tuple[list[dict], Finish]:
    rows = self.tokenizer.encode_inputs(registry.text_pairs(items), self.max_length)
    return rows, lambda per_row: [np.asarray(v, np.float32).tolist()
                                  for v in per_row["embeddings"]]

  def too_long(self, items: list):
    return _pairs_too_long(self.tokenizer, items, self.max_length)


class FillMaskAnswers:
  """A masked-LM head: the `top_k` most likely tokens at each [MASK] of each text."""

  per_token = ("scores", "token_ids")

  def __init__(self, tokenizer, max_length: int, top_k: int):
    if not 1 <= top_k <= tokenizer.vocab_size:
      raise FlaxbertError(f"--top-k must be between 1 and the vocabulary's "
                          f"{tokenizer.vocab_size} tokens, got {top_k}")
    self.tokenizer, self.max_length, self.top_k = tokenizer, max_length, top_k

  def device(self, outputs: dict, batch: dict) -> dict:
    # fill-mask's candidates at every position (no recompile per number of masks).
    return fill_mask.top_candidates(outputs["mlm_logits"], self.tokenizer.vocab_size,
                                    self.top_k)

  def prepare(self, items: list) -> tuple[list[dict], Finish]:
    _check_texts(items)
    rows = fill_mask.encode_masked(self.tokenizer, items, self.max_length)
    mask_id = self.tokenizer.mask_id

    def finish(per_row: dict) -> list:
      answers = []
      for row, scores, ids in zip(rows, per_row["scores"], per_row["token_ids"]):
        positions = np.flatnonzero(row["input_ids"] == mask_id)
        answers.append([fill_mask.mask_candidates(self.tokenizer, row["input_ids"], m,
                                                  scores[p], ids[p])
                        for m, p in enumerate(positions)])
      return answers

    return rows, finish

  def too_long(self, items: list):
    _check_texts(items)
    mask = self.tokenizer.id_to_token(self.tokenizer.mask_id)
    counts = []
    for text in items:
      parts = text.split(mask)
      counts.append(sum(len(p) for p in self.tokenizer.encode_batch(parts)) + len(parts) + 1)
    return _first_over(counts, self.max_length)


def _check_texts(items: list) -> None:
  for i, item in enumerate(items):
    if not isinstance(item, str):
      raise FlaxbertError(f"input {i}: expected a text, got {type(item).__name__}")


def _first_over(counts, limit: int):
  for i, count in enumerate(counts):
    if count > limit:
      return i, count, limit
  return None


def _pairs_too_long(tokenizer, items: list, limit: int):
  counts = []
  for a, b in registry.text_pairs(items):
    counts.append(len(tokenizer.encode(a)) + 2 + (len(tokenizer.encode(b)) + 1
                                                  if b is not None else 0))
  return _first_over(counts, limit)


def answers_for(manifest: dict, tokenizer, max_length: int, top_k: int = 5):
  """The answers of a serving export's head (its manifest's)."""
  head = manifest.get("head")
  if head in TASK_OF_HEAD:
    return TaskAnswers(head, tokenizer, manifest.get("labels"), manifest.get("task_settings"),
                       max_length)
  if head == "encoder":
    return EmbedAnswers(tokenizer, manifest.get("sentence_embedding"), max_length)
  if head in fill_mask.MLM_HEADS:
    return FillMaskAnswers(tokenizer, max_length, top_k)
  raise FlaxbertError(f"cannot serve a {head!r} head (served: {', '.join(HEADS)})")


def default_max_length(manifest: dict) -> int:
  """The input tokens offline inference uses for this model: the fine-tune's max_seq_length,
  an encoder's sentence-transformers max_seq_length, else 128; at most the positions."""
  recorded = (manifest.get("task_settings") or {}).get("max_seq_length")
  if manifest.get("head") == "encoder":
    recorded = (manifest.get("sentence_embedding") or {}).get("max_length")
  return min(recorded or embed.DEFAULT_MAX_LENGTH, int(manifest["max_length"]))
