"""Recipe: fine-tuning a bundle or HF checkpoint on a task of the registry (tasks/registry.py)
-> task head -> epochs (or --max-steps) of AdamW -> dev scores.

On the run skeleton (training/run.py): epochs become total steps, the dev set is scored every
--eval-every steps (default: every epoch) and at the last step, through the same code as
`flaxbert predict` / `flaxbert evaluate`; the parameters with the best --metric-for-best are
kept as a bundle in WORKDIR/best/ (their predictions in WORKDIR/predictions/, their scores in
best_score.json), the final parameters go to WORKDIR/bundle/, and results.json sums up. With
--early-stopping-patience N the run ends after N evaluations without a better score
(training/early_stopping.py, its record in early_stopping.json).

The pretrained weights enter as the loop's initial parameters of a fresh run; the loop's exact
resume covers fine-tuning unchanged: re-running the same command continues from the newest
checkpoint (and a run that stopped early stays stopped). `--set` changes how the model
computes (dtype, dropout, attention, remat), never its architecture, which is --init's.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Callable

import numpy as np

from flaxbert import bundle as bundle_lib
from flaxbert import sharding as mesh_lib
from flaxbert.data.pipeline import TaskData, finetune_data
from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json, read_json_lines, write_json
from flaxbert.models.config import BertConfig
from flaxbert.models.factory import build_model, dummy_inputs
from flaxbert.recipes.configs import DEV_METRICS, FinetuneConfig
from flaxbert.tasks import predict as predict_lib, registry
from flaxbert.training import objectives, optim
from flaxbert.training.early_stopping import EarlyStopping, improves
from flaxbert.training.run import Run, open_run
from flaxbert.training.step import Objective, make_train_step

log = logging.getLogger("flaxbert")

# The model config fields `--set` may change: how the model computes and regularises. The
# rest is the architecture of --init, which its weights fix (and initializer_range would only
# reach a fresh head, which is initialised before the overrides apply).
OVERRIDABLE = ("dtype", "hidden_dropout", "attention_dropout", "attention_impl", "remat")


# --- inputs ----------------------------------------------------------------------------------

def check_settings(cfg: FinetuneConfig, mesh) -> None:
  if registry.get(cfg.task, cfg.regression).head == "seq2seq":   # recipes/seq2seq.py
    raise FlaxbertError("seq2seq fine-tuning is `flaxbert finetune seq2seq`")
  if cfg.epochs <= 0 or cfg.batch_size < 1 or cfg.max_seq_length < 8:
    raise FlaxbertError("--epochs and --batch-size must be positive and --max-length at least 8")
  dp = mesh_lib.data_parallel_size(mesh)
  if cfg.accum_steps < 1 or cfg.batch_size % (dp * cfg.accum_steps):
    raise FlaxbertError(f"--batch-size {cfg.batch_size} must divide by the {dp} data-parallel "
                        f"devices x {cfg.accum_steps} accumulation steps")
  for n, flag in ((cfg.max_train_examples, "--max-train-examples"),
                  (cfg.max_dev_examples, "--max-dev-examples"), (cfg.max_steps, "--max-steps"),
                  (cfg.eval_every, "--eval-every"),
                  (cfg.early_stopping_patience, "--early-stopping-patience")):
    if n is not None and n < 1:
      raise FlaxbertError(f"{flag} must be positive")
  if not 0.0 <= cfg.warmup_ratio <= 1.0:
    raise FlaxbertError(f"--warmup-ratio {cfg.warmup_ratio} must be in [0, 1]")
  metrics = DEV_METRICS[cfg.task_name]
  if cfg.best_metric not in metrics:
    raise FlaxbertError(f"--metric-for-best {cfg.best_metric}: {cfg.task_name} reports "
                        f"{', '.join(metrics)}")
  for key, _ in cfg.overrides:
    if key not in OVERRIDABLE:
      raise FlaxbertError(f"--set {key}: fine-tuning keeps the architecture of --init; it can "
                          f"set {', '.join(OVERRIDABLE)}")
  BertConfig().replace(**dict(cfg.overrides))   # a bad value: one line, before any write


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
  with open_run(cfg, f"finetune-{cfg.task}", check_settings) as run:
    return _finetune(run)


def _finetune(run: Run) -> dict:
  cfg = run.cfg

  def model(labels):
    bundle = with_overrides(
        bundle_lib.load(cfg.init, head=cfg.head, num_labels=len(labels) if labels else None,
                        labels=labels, seed=cfg.seed), cfg.overrides)
    bundle.labels = labels
    return bundle

  return train_task(run, model, tokenizer_from=cfg.init,
                    objective=lambda model: objectives.finetuning(model, cfg.head))


@dataclasses.dataclass(frozen=True)
class Trainee:
  """What the loop trains when it is more than the bundle's model (a distillation student with
  its training-only projection): `model` and its `initial_params` (host arrays); the bundle's
  parameters are the trained ones under `bundle_key` (None: all of them), which dev scoring,
  best/ and bundle/ use."""
  model: Any
  initial_params: Any
  bundle_key: str | None = None

  def bundle_params(self, params):
    return params if self.bundle_key is None else params[self.bundle_key]


def train_task(run: Run, make_bundle: Callable[[list[str] | None], bundle_lib.Bundle], *,
               tokenizer_from: str, objective: Callable[[Any], Objective],
               frozen: Callable[[], tuple] = tuple, known_labels: list[str] | None = None,
               unlabeled: tuple[str, ...] = (), more_results: dict | None = None,
               joined: Callable[[TaskData], dict[str, np.ndarray]] | None = None,
               more_train_keys: tuple[str, ...] = (),
               trainee: Callable[[bundle_lib.Bundle], Trainee] | None = None) -> dict:
  """A run that trains a bundle on a task's files, the fine-tune's skeleton (module
  docstring): `make_bundle(labels of the training file)` gives the model to train, its labels
  the ones the data and the dev scores use; `objective(model)` its loss; `frozen()` the
  further inputs of every step (a distillation teacher's parameters, on the mesh);
  `known_labels` the labels dev files may hold (default: the training file's); `unlabeled`
  files of texts trained on beside the training file (without labels: -1, regression NaN);
  `more_results` more entries of results.json; `joined(prepared data)` per-example arrays
  joined to each training batch (TaskData.batches; a distillation's cached teacher outputs),
  made before `frozen()`; `more_train_keys` further batch fields the step reads;
  `trainee(bundle)` what the loop trains and `objective` gets, when not the bundle's model
  and parameters."""
  cfg, mesh, is_main = run.cfg, run.mesh, run.is_main
  task = registry.get(cfg.task, cfg.regression)
  prepared = run.prepare(lambda: task.prepare_files(
      cfg.train, cfg.dev, cfg.workdir, max_train_examples=cfg.max_train_examples,
      max_dev_examples=cfg.max_dev_examples, seed=cfg.seed, known_labels=known_labels),
      "files")
  train_path, dev_path, labels = prepared.train, prepared.dev, prepared.labels
  version_2 = cfg.version_2 if cfg.version_2 is not None else prepared.version_2
  settings = predict_lib.TaskSettings(
      task=task.name, max_seq_length=cfg.max_seq_length, regression=cfg.regression,
      doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length,
      max_answer_length=cfg.max_answer_length, n_best=cfg.n_best,
      null_threshold=cfg.null_threshold if version_2 else None)

  bundle = make_bundle(labels)
  labels = bundle.labels
  trained = trainee(bundle) if trainee else Trainee(bundle.model, bundle.params)
  task.for_bundle(bundle, cfg.init, settings)   # the head and the length the bundle takes
  tokenizer_dir = run.tokenizer(copy_from=tokenizer_from)
  run.record(model="bert", head=cfg.head, num_labels=getattr(bundle.model, "num_labels", None),
             labels=labels, model_config=bundle.config.to_dict())
  if trained.bundle_key is not None:   # for `flaxbert export WORKDIR` (training/run.py)
    run.record(bundle_params_key=trained.bundle_key)
  data_settings = task.data_settings(labels, settings)
  if unlabeled:
    data_settings["unlabeled"] = list(unlabeled)
  data = run.prepare(lambda: finetune_data(
      task.data, {"train": [train_path, *unlabeled]}, tokenizer_dir,
      run.path("data", "prepared"), max_seq_length=cfg.max_seq_length, **data_settings), "data")
  n_train = data.num_examples("train")
  steps_per_epoch = max(1, n_train // cfg.batch_size)
  total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
  fields = joined(data) if joined is not None else {}
  train_batches = _TrainBatches(data.batches("train", batch_size=cfg.batch_size, seed=cfg.seed,
                                             joined=fields),
                                (*task.train_keys, *more_train_keys, *fields))

  opt_cfg = optim.OptimizerConfig(
      name="adamw", learning_rate=cfg.learning_rate,
      warmup_steps=int(cfg.warmup_ratio * total_steps), total_steps=total_steps,
      schedule="linear", weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm)
  tx = optim.make_optimizer(opt_cfg)
  model = bundle.model

  dev = task.inputs(bundle.tokenizer, settings, labels, dev_path, need_label=True)
  predict = task.make_predict(model, mesh, cfg.eval_batch_size)
  baseline = task.baseline(dev, prepared)
  metric = cfg.best_metric
  _check_metric(metric, baseline, dev_path)
  best_file = run.path("best_score.json")
  prediction_file = run.path("predictions", f"dev.{task.extension}")
  early, loop_steps = _early_stopping(run, metric, total_steps)

  def evaluate(params, step):
    params = trained.bundle_params(params)
    predicted = predict(params, dev)
    scores = dev.score(predicted)
    main = scores[metric]
    best = read_json(best_file) if os.path.isfile(best_file) else None
    if (best is None or improves(main, best["score"], cfg.higher_is_better)
        or best["step"] == step):
      run.save_bundle("best", bundle, params=params, files=_settings_file(settings))
      if is_main:
        os.makedirs(os.path.dirname(prediction_file), exist_ok=True)
        dev.write(predicted, prediction_file)
        write_json(best_file, {"step": step, "epoch": step / steps_per_epoch,
                               "metric": metric, "score": main, "dev": scores})
    if early is not None:
      early.record(step, main)
    return {f"dev_{k}": v for k, v in scores.items() if isinstance(v, float)}

  def stop(step, metrics):
    return early.reason() if early.stopped_at() == step else None

  loop_cfg = run.loop_config(
      total_steps=loop_steps, eval_every=cfg.eval_every or steps_per_epoch,
      checkpoint_every=cfg.checkpoint_every or steps_per_epoch, desc=run.kind.replace("-", " "),
      tokens_per_step=cfg.batch_size * cfg.max_seq_length)
  result = run.train(loop_cfg, model=trained.model, tx=tx, dummy_inputs=dummy_inputs(),
                     train_step=make_train_step(objective(trained.model), tx,
                                                optim.learning_rate_schedule(opt_cfg),
                                                cfg.accum_steps),
                     data=train_batches, evaluate=evaluate,
                     initial_params=trained.initial_params,
                     stop=stop if early is not None else None, frozen=frozen())
  run.save_bundle("bundle", bundle, params=trained.bundle_params(result.state.params),
                  files=_settings_file(settings))
  results = {}
  if is_main:
    stopped_at = early.stopped_at() if early is not None else None
    if stopped_at is not None and stopped_at >= total_steps:
      stopped_at = None   # patience ran out at the last step: the run ended there anyway
    final = {k: v for k, v in result.last_metrics.items() if k.startswith("dev_")}
    results = {"task": task.name, "metric": metric, "greater_is_better": cfg.higher_is_better,
               "best": read_json(best_file),
               "final": final or _recorded_dev_scores(run.path("metrics.jsonl")),
               "majority_baseline": baseline, "train_examples": task.count(train_path),
               "train_features": n_train, "dev_examples": task.count(dev_path),
               "epochs": cfg.epochs, "max_steps": cfg.max_steps,
               "steps": stopped_at or max(total_steps, result.start_step),
               "stopped_early": early.reason() if stopped_at is not None else None,
               "batch_size": cfg.batch_size, "max_seq_length": cfg.max_seq_length,
               "labels": labels, "train_file": train_path, "dev_file": dev_path,
               **(more_results or {})}
    write_json(os.path.join(cfg.workdir, "results.json"), results)
  return results


def _early_stopping(run: Run, metric: str, total_steps: int
                    ) -> tuple[EarlyStopping | None, int]:
  """With --early-stopping-patience: the run's record of its evaluations (a resumed run
  counts on), and the step to train to: a run that stopped early trains no further, whatever
  --max-steps says now."""
  cfg = run.cfg
  if cfg.early_stopping_patience is None:
    return None, total_steps
  early = EarlyStopping.load(run.path("early_stopping.json"), metric,
                             cfg.early_stopping_patience, cfg.higher_is_better, run.is_main)
  stopped_at = early.stopped_at()
  if stopped_at is not None and stopped_at < total_steps:
    log.info("flaxbert: this run stopped early at step %d (%s); nothing left to train",
             stopped_at, early.reason())
    return early, stopped_at
  return early, total_steps


def with_overrides(bundle, overrides) -> bundle_lib.Bundle:
  """The bundle's model with the `--set` fields (OVERRIDABLE) changed; the parameters stay as
  loaded (float32: a bfloat16 dtype is the compute dtype, as in pretraining)."""
  if not overrides:
    return bundle
  config = bundle.config.replace(**dict(overrides))
  model = build_model(config, bundle.head, getattr(bundle.model, "num_labels", None))
  return dataclasses.replace(bundle, model=model, config=config)


def _check_metric(metric: str, baseline: dict, dev_path: str) -> None:
  """--metric-for-best must be a float score this dev file gives (the SQuAD v2 splits need
  unanswerable questions); the baseline's scores are the dev file's, before any training."""
  floats = [k for k, v in baseline.items() if isinstance(v, float)]
  if metric not in floats:
    raise FlaxbertError(f"--metric-for-best {metric}: {dev_path} gives no such dev score; "
                        f"use one of {', '.join(floats)}")


def _recorded_dev_scores(metrics_file: str) -> dict:
  """The dev scores of the last evaluation in metrics.jsonl: a re-run with nothing left to
  train evaluates nothing, and results.json keeps what the run scored."""
  scores = {}
  if os.path.isfile(metrics_file):
    for _, row in read_json_lines(metrics_file):
      scores = {k: v for k, v in row.items() if k.startswith("dev_")} or scores
  return scores


def _settings_file(settings) -> dict:
  """The task settings `flaxbert predict` reads from a fine-tuned bundle."""
  return {bundle_lib.SETTINGS_FILE: dataclasses.asdict(settings)}
