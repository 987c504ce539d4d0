"""A fine-tuning run: a bundle or HF checkpoint -> task head -> epochs of AdamW -> dev scores.

On top of `loop.run`: epochs become total steps, the dev set is scored at the end of every
epoch (through the same code as `flaxbert predict` / `flaxbert evaluate`), the best dev
parameters are kept as a bundle in WORKDIR/best/ (with their predictions in
WORKDIR/predictions/), the final parameters go to WORKDIR/bundle/, and results.json sums up.

The pretrained weights enter as the loop's initial parameters of a fresh run; the loop's exact
resume covers fine-tuning unchanged: re-running the same command continues from the newest
checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil

import jax
import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json, write_json
from flaxbert.models.factory import dummy_inputs
from flaxbert.tasks import predict as predict_lib, registry
from flaxbert.training import loop, optim
from flaxbert import sharding as mesh_lib
from flaxbert.training.finetune_step import make_train_step
from flaxbert.training.state import host_params

log = logging.getLogger("flaxbert")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  task: str                            # classify | ner | qa
  train: str
  dev: str
  init: str                            # bundle or HF checkpoint directory
  workdir: str
  regression: bool = False
  epochs: float = 3.0
  batch_size: int = 32                 # global
  eval_batch_size: int = 64
  max_seq_length: int = 128
  learning_rate: float = 5e-5
  warmup_ratio: float = 0.1
  weight_decay: float = 0.01
  clip_norm: float = 1.0
  seed: int = 0
  max_train_examples: int | None = None
  max_dev_examples: int | None = None
  doc_stride: int = 128
  max_query_length: int = 64
  max_answer_length: int = 30
  n_best: int = 20
  version_2: bool | None = None        # None: detected from the files
  null_threshold: float = 0.0
  mesh: str | None = None
  log_every: int = 10
  checkpoint_every: int | None = None  # default: once per epoch
  keep_checkpoints: int = 2
  async_checkpoints: bool = True
  progress: bool = True

  @property
  def spec(self) -> registry.Task:
    """The registry's task (classify with --regression is the regression task)."""
    return registry.get(self.task, self.regression)

  @property
  def data_task(self) -> str:
    return self.spec.data

  @property
  def head(self) -> str:
    return self.spec.head

  @property
  def metric(self) -> str:
    return self.spec.metric


# --- inputs ----------------------------------------------------------------------------------

def _check(cfg: FinetuneConfig, mesh) -> None:
  if cfg.spec.head == "seq2seq":   # an encoder-decoder run: recipes/seq2seq.py
    raise FlaxbertError("seq2seq fine-tuning is `flaxbert finetune seq2seq`")
  if cfg.epochs <= 0 or cfg.batch_size < 1 or cfg.max_seq_length < 8:
    raise FlaxbertError("--epochs and --batch-size must be positive and --max-length at least 8")
  dp = mesh_lib.data_parallel_size(mesh)
  if cfg.batch_size % dp:
    raise FlaxbertError(f"--batch-size {cfg.batch_size} must divide by the {dp} data-parallel "
                        "devices")
  for n, flag in ((cfg.max_train_examples, "--max-train-examples"),
                  (cfg.max_dev_examples, "--max-dev-examples")):
    if n is not None and n < 1:
      raise FlaxbertError(f"{flag} must be positive")


class _TrainBatches:
  """The training iterator with only the fields the step uses (and its checkpoint state)."""

  def __init__(self, iterator, keys):
    self._iterator, self._keys = iterator, ("input_ids", "segment_ids", "input_mask",
                                            "example_weight", *keys)

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._iterator)
    return {k: batch[k] for k in self._keys}

  def get_state(self):
    return self._iterator.get_state()

  def set_state(self, state):
    self._iterator.set_state(state)


# --- the run ---------------------------------------------------------------------------------

def finetune(cfg: FinetuneConfig) -> dict:
  """Runs (or resumes) a fine-tune; returns results.json's content."""
  from flaxbert.data.pipeline import finetune_data
  from flaxbert import bundle as bundle_lib
  os.makedirs(cfg.workdir, exist_ok=True)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  _check(cfg, mesh)
  is_main = jax.process_index() == 0
  task = cfg.spec
  prepared = task.prepare_files(cfg.train, cfg.dev, cfg.workdir,
                                max_train_examples=cfg.max_train_examples,
                                max_dev_examples=cfg.max_dev_examples, seed=cfg.seed)
  train_path, dev_path, labels = prepared.train, prepared.dev, prepared.labels
  version_2 = cfg.version_2 if cfg.version_2 is not None else prepared.version_2
  settings = predict_lib.TaskSettings(
      task=task.name, max_seq_length=cfg.max_seq_length, regression=cfg.regression,
      doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length,
      max_answer_length=cfg.max_answer_length, n_best=cfg.n_best,
      null_threshold=cfg.null_threshold if version_2 else None)

  bundle = bundle_lib.load(cfg.init, head=cfg.head,
                           num_labels=len(labels) if labels else None, labels=labels,
                           seed=cfg.seed)
  bundle.labels = labels
  if cfg.max_seq_length > bundle.config.max_position_embeddings:
    raise FlaxbertError(f"--max-length {cfg.max_seq_length} exceeds the model's "
                        f"{bundle.config.max_position_embeddings} positions")
  tokenizer_dir = os.path.join(cfg.workdir, "tokenizer")
  if is_main and not os.path.isdir(tokenizer_dir):
    bundle.tokenizer.save(tokenizer_dir + ".tmp")
    os.replace(tokenizer_dir + ".tmp", tokenizer_dir)
  data = finetune_data(task.data, {"train": train_path}, tokenizer_dir,
                       os.path.join(cfg.workdir, "data", "prepared"),
                       max_seq_length=cfg.max_seq_length,
                       **task.data_settings(labels, settings))
  n_train = data.num_examples("train")
  steps_per_epoch = max(1, n_train // cfg.batch_size)
  total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
  train_batches = _TrainBatches(data.batches("train", batch_size=cfg.batch_size, seed=cfg.seed),
                                task.train_keys)

  opt_cfg = optim.OptimizerConfig(
      name="adamw", learning_rate=cfg.learning_rate,
      warmup_steps=int(cfg.warmup_ratio * total_steps), total_steps=total_steps,
      schedule="linear", weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm)
  tx = optim.make_optimizer(opt_cfg)
  model = bundle.model

  dev = task.inputs(bundle.tokenizer, settings, labels, dev_path, need_label=True)
  predict = task.make_predict(model, mesh, cfg.eval_batch_size)
  baseline = task.baseline(dev, prepared)
  best_file = os.path.join(cfg.workdir, "best_score.json")
  prediction_file = os.path.join(cfg.workdir, "predictions",
                                 f"dev.{task.extension}")

  def evaluate(params, step):
    predicted = predict(params, dev)
    scores = dev.score(predicted)
    main = scores[cfg.metric]
    best = read_json(best_file) if os.path.isfile(best_file) else None
    if best is None or main > best["score"] or best["step"] == step:
      host = host_params(params)
      if is_main:
        _save_bundle(os.path.join(cfg.workdir, "best"), bundle, host, settings)
        os.makedirs(os.path.dirname(prediction_file), exist_ok=True)
        dev.write(predicted, prediction_file)
        write_json(best_file, {"step": step, "epoch": step / steps_per_epoch,
                               "metric": cfg.metric, "score": main, "dev": scores})
    return {f"dev_{k}": v for k, v in scores.items() if isinstance(v, float)}

  loop_cfg = loop.LoopConfig(
      workdir=cfg.workdir, total_steps=total_steps, log_every=cfg.log_every,
      eval_every=steps_per_epoch, checkpoint_every=cfg.checkpoint_every or steps_per_epoch,
      keep_checkpoints=cfg.keep_checkpoints, async_checkpoints=cfg.async_checkpoints,
      progress=cfg.progress, desc=f"finetune {cfg.task}", seed=cfg.seed,
      tokens_per_step=cfg.batch_size * cfg.max_seq_length)
  result = loop.run(loop_cfg, model=model, tx=tx, mesh=mesh, dummy_inputs=dummy_inputs(),
                    train_step=make_train_step(model, tx, cfg.head,
                                               optim.learning_rate_schedule(opt_cfg)),
                    data=train_batches, evaluate=evaluate, initial_params=bundle.params)
  host = host_params(result.state.params)
  results = {}
  if is_main:
    _save_bundle(os.path.join(cfg.workdir, "bundle"), bundle, host, settings)
    best = read_json(best_file)
    results = {"task": task.name, "metric": cfg.metric, "best": best,
               "final": {k: v for k, v in result.last_metrics.items() if k.startswith("dev_")},
               "majority_baseline": baseline, "train_examples": task.count(train_path),
               "train_features": n_train, "dev_examples": task.count(dev_path),
               "epochs": cfg.epochs, "steps": total_steps, "batch_size": cfg.batch_size,
               "max_seq_length": cfg.max_seq_length, "labels": labels,
               "train_file": train_path, "dev_file": dev_path}
    write_json(os.path.join(cfg.workdir, "results.json"), results)
  return results


def _save_bundle(out: str, bundle, params, settings) -> None:
  from flaxbert import bundle as bundle_lib
  shutil.rmtree(out, ignore_errors=True)   # the run's own directories, regenerated
  bundle_lib.save(out, bundle_lib.Bundle(bundle.model, jax.tree.map(np.asarray, params),
                                         bundle.tokenizer, bundle.config, bundle.head,
                                         bundle.labels))
  write_json(os.path.join(out, predict_lib.SETTINGS_FILE), dataclasses.asdict(settings))
