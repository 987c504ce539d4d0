"""Recipe: fine-tuning a bundle or HF checkpoint on a task of the registry (tasks/registry.py)
-> task head -> epochs of AdamW -> dev scores.

On the run skeleton (training/run.py): epochs become total steps, the dev set is scored at the end of every
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

from flaxbert import bundle as bundle_lib
from flaxbert import sharding as mesh_lib
from flaxbert.data.pipeline import finetune_data
from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json, write_json
from flaxbert.models.factory import dummy_inputs
from flaxbert.recipes.configs import FinetuneConfig
from flaxbert.tasks import predict as predict_lib, registry
from flaxbert.training import objectives, optim
from flaxbert.training.run import Run, open_run
from flaxbert.training.step import make_train_step

log = logging.getLogger("flaxbert")


# --- inputs ----------------------------------------------------------------------------------

def _check(cfg: FinetuneConfig, mesh) -> None:
  if registry.get(cfg.task, cfg.regression).head == "seq2seq":   # recipes/seq2seq.py
    raise FlaxbertError("seq2seq fine-tuning is `flaxbert finetune seq2seq`")
  if cfg.epochs <= 0 or cfg.batch_size < 1 or cfg.max_seq_length < 8:
    raise FlaxbertError("--epochs and --batch-size must be positive and --max-length at least 8")
  dp = mesh_lib.data_parallel_size(mesh)
  if cfg.accum_steps < 1 or cfg.batch_size % (dp * cfg.accum_steps):
    raise FlaxbertError(f"--batch-size {cfg.batch_size} must divide by the {dp} data-parallel "
                        f"devices x {cfg.accum_steps} accumulation steps")
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
  with open_run(cfg, f"finetune-{cfg.task}", _check) as run:
    return _finetune(run)


def _finetune(run: Run) -> dict:
  cfg, mesh, is_main = run.cfg, run.mesh, run.is_main
  task = registry.get(cfg.task, cfg.regression)
  prepared = run.prepare(lambda: task.prepare_files(
      cfg.train, cfg.dev, cfg.workdir, max_train_examples=cfg.max_train_examples,
      max_dev_examples=cfg.max_dev_examples, seed=cfg.seed), "files")
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
  task.for_bundle(bundle, cfg.init, settings)   # the head and the length the bundle takes
  tokenizer_dir = run.tokenizer(copy_from=cfg.init)
  run.record(model="bert", head=cfg.head, num_labels=getattr(bundle.model, "num_labels", None),
             labels=labels, model_config=bundle.config.to_dict())
  data = run.prepare(lambda: finetune_data(
      task.data, {"train": train_path}, tokenizer_dir, run.path("data", "prepared"),
      max_seq_length=cfg.max_seq_length, **task.data_settings(labels, settings)), "data")
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
  best_file = run.path("best_score.json")
  prediction_file = run.path("predictions", f"dev.{task.extension}")

  def evaluate(params, step):
    predicted = predict(params, dev)
    scores = dev.score(predicted)
    main = scores[cfg.metric]
    best = read_json(best_file) if os.path.isfile(best_file) else None
    if best is None or main > best["score"] or best["step"] == step:
      run.save_bundle("best", bundle, params=params, files=_settings_file(settings))
      if is_main:
        os.makedirs(os.path.dirname(prediction_file), exist_ok=True)
        dev.write(predicted, prediction_file)
        write_json(best_file, {"step": step, "epoch": step / steps_per_epoch,
                               "metric": cfg.metric, "score": main, "dev": scores})
    return {f"dev_{k}": v for k, v in scores.items() if isinstance(v, float)}

  loop_cfg = run.loop_config(
      total_steps=total_steps, eval_every=steps_per_epoch,
      checkpoint_every=cfg.checkpoint_every or steps_per_epoch, desc=f"finetune {cfg.task}",
      tokens_per_step=cfg.batch_size * cfg.max_seq_length)
  result = run.train(loop_cfg, model=model, tx=tx, dummy_inputs=dummy_inputs(),
                     train_step=make_train_step(objectives.finetuning(model, cfg.head), tx,
                                                optim.learning_rate_schedule(opt_cfg),
                                                cfg.accum_steps),
                     data=train_batches, evaluate=evaluate, initial_params=bundle.params)
  run.save_bundle("bundle", bundle, params=result.state.params,
                  files=_settings_file(settings))
  results = {}
  if is_main:
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


def _settings_file(settings) -> dict:
  """The task settings `flaxbert predict` reads from a fine-tuned bundle."""
  return {predict_lib.SETTINGS_FILE: dataclasses.asdict(settings)}
