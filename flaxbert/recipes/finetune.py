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
import random

import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json, write_json
from flaxbert.models.factory import dummy_inputs
from flaxbert.tasks import classify, ner, predict as predict_lib, squad
from flaxbert import bundle as bundle_lib
from flaxbert import sharding as mesh_lib
from flaxbert.data.pipeline import finetune_data
from flaxbert.training import optim
from flaxbert.training.run import Run, open_run
from flaxbert.recipes.configs import FINETUNE_TASKS as TASKS, FinetuneConfig
from flaxbert.training import objectives
from flaxbert.training.step import make_train_step

log = logging.getLogger("flaxbert")

TRAIN_KEYS = {"classification": ("label",), "regression": ("label",), "tagging": ("labels",),
              "squad": ("start_position", "end_position")}


# --- inputs ----------------------------------------------------------------------------------

def _check(cfg: FinetuneConfig, mesh) -> None:
  if cfg.task not in TASKS:
    raise FlaxbertError(f"unknown task {cfg.task!r} (known: {', '.join(TASKS)})")
  if cfg.regression and cfg.task != "classify":
    raise FlaxbertError("--regression applies to classify only")
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


def _subset_indices(n: int, keep: int | None, seed: int, random_order: bool) -> list[int] | None:
  if keep is None or keep >= n:
    return None
  if not random_order:
    return list(range(keep))
  return sorted(random.Random(seed).sample(range(n), keep))


def _prepare_files(cfg: FinetuneConfig) -> tuple[str, str, list[str] | None, list[str]]:
  """(train file, dev file, label names, training labels as read) after checks and
  subsampling (subsets are written under WORKDIR/data/)."""
  out = os.path.join(cfg.workdir, "data")
  os.makedirs(out, exist_ok=True)
  train, dev = cfg.train, cfg.dev
  if cfg.task == "classify":
    tables = {}
    for split, path, keep, rand in (("train", train, cfg.max_train_examples, True),
                                    ("dev", dev, cfg.max_dev_examples, False)):
      table = classify.read_table(path, need_label=True)
      if not table.rows:
        raise FlaxbertError(f"{path}: no rows")
      chosen = _subset_indices(len(table.rows), keep, cfg.seed, rand)
      if chosen is not None:
        table.rows = [table.rows[i] for i in chosen]
        table.numbers = [table.numbers[i] for i in chosen]
        subset = os.path.join(out, f"{split}_subset.tsv")
        classify.write_rows(subset, table.columns, table.rows)
        path = subset
      tables[split] = (path, table)
    train, dev = tables["train"][0], tables["dev"][0]
    train_labels = [x.strip() for x in tables["train"][1].column("label")]
    if cfg.regression:
      classify.parse_float(tables["train"][1], train_labels, "label")
      dev_table = tables["dev"][1]
      classify.parse_float(dev_table, dev_table.column("label"), "label")
      return train, dev, None, train_labels
    known = sorted(set(train_labels))
    dev_table = tables["dev"][1]
    for number, label in zip(dev_table.numbers, dev_table.column("label")):
      if label.strip() not in known:
        raise FlaxbertError(f"{cfg.dev}:{number}: unknown label {label.strip()!r} (the "
                            f"training labels are {', '.join(known)})")
    return train, dev, sorted(set(train_labels)), train_labels
  if cfg.task == "ner":
    files = {}
    for split, path, keep, rand in (("train", train, cfg.max_train_examples, True),
                                    ("dev", dev, cfg.max_dev_examples, False)):
      sentences = ner.read_conll(path, need_tags=True)
      if not sentences:
        raise FlaxbertError(f"{path}: no sentences")
      chosen = _subset_indices(len(sentences), keep, cfg.seed, rand)
      if chosen is not None:
        sentences = [sentences[i] for i in chosen]
        path = os.path.join(out, f"{split}_subset.conll")
        with open(path + ".partial", "w", encoding="utf-8") as f:
          for s in sentences:
            f.write("\n".join(s.lines) + "\n\n")
        os.replace(path + ".partial", path)
      files[split] = (path, sentences)
    tags = {t for s in files["train"][1] for t in s.tags}
    labels = sorted(tags, key=lambda t: (t != "O", t))
    for sentence in files["dev"][1]:
      for offset, tag in enumerate(sentence.tags):
        if tag not in tags:
          raise FlaxbertError(f"{cfg.dev}:{sentence.number + offset}: unknown tag {tag!r} (not "
                              f"in the training file)")
    return files["train"][0], files["dev"][0], labels, []
  # qa
  paths = {}
  for split, path, keep, rand in (("train", train, cfg.max_train_examples, True),
                                  ("dev", dev, cfg.max_dev_examples, False)):
    squad.check_answers(path)
    ids = [q["id"] for q in squad.read_questions(path)]
    if not ids:
      raise FlaxbertError(f"{path}: no questions")
    chosen = _subset_indices(len(ids), keep, cfg.seed, rand)
    if chosen is not None:
      subset = os.path.join(out, f"{split}_subset.json")
      squad.write_subset(path, subset, {ids[i] for i in chosen})
      path = subset
    paths[split] = path
  return paths["train"], paths["dev"], None, []


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
  train_path, dev_path, labels, train_labels = run.prepare(lambda: _prepare_files(cfg),
                                                           "files")
  version_2 = cfg.version_2
  if cfg.task == "qa" and version_2 is None:
    version_2 = squad.version_2(train_path) or squad.version_2(dev_path)
  settings = predict_lib.TaskSettings(
      task=cfg.task, max_seq_length=cfg.max_seq_length, regression=cfg.regression,
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
  tokenizer_dir = run.tokenizer(copy_from=cfg.init)
  run.record(model="bert", head=cfg.head, num_labels=getattr(bundle.model, "num_labels", None),
             labels=labels, model_config=bundle.config.to_dict())
  extra = {"labels": labels} if labels else {}
  if cfg.task == "qa":
    extra = {"doc_stride": cfg.doc_stride, "max_query_length": cfg.max_query_length}
  data = run.prepare(lambda: finetune_data(
      cfg.data_task, {"train": train_path}, tokenizer_dir, run.path("data", "prepared"),
      max_seq_length=cfg.max_seq_length, **extra), "data")
  n_train = data.num_examples("train")
  steps_per_epoch = max(1, n_train // cfg.batch_size)
  total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
  train_batches = _TrainBatches(data.batches("train", batch_size=cfg.batch_size, seed=cfg.seed),
                                TRAIN_KEYS[cfg.data_task])

  opt_cfg = optim.OptimizerConfig(
      name="adamw", learning_rate=cfg.learning_rate,
      warmup_steps=int(cfg.warmup_ratio * total_steps), total_steps=total_steps,
      schedule="linear", weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm)
  tx = optim.make_optimizer(opt_cfg)
  model = bundle.model

  dev = predict_lib.PREDICTORS[cfg.task](bundle.tokenizer, settings, labels, dev_path,
                                         need_label=True)
  runner = predict_lib.Runner(model, mesh, cfg.eval_batch_size)
  baseline = _baseline(cfg, dev, train_labels)
  best_file = os.path.join(cfg.workdir, "best_score.json")
  prediction_file = os.path.join(cfg.workdir, "predictions",
                                 f"dev.{predict_lib.EXTENSIONS[cfg.task]}")

  def evaluate(params, step):
    predicted = dev.predictions(runner(params, dev.arrays))
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
    results = {"task": cfg.task, "metric": cfg.metric, "best": best,
               "final": {k: v for k, v in result.last_metrics.items() if k.startswith("dev_")},
               "majority_baseline": baseline, "train_examples": _count(cfg.task, train_path),
               "train_features": n_train, "dev_examples": _count(cfg.task, dev_path),
               "epochs": cfg.epochs, "steps": total_steps, "batch_size": cfg.batch_size,
               "max_seq_length": cfg.max_seq_length, "labels": labels,
               "train_file": train_path, "dev_file": dev_path}
    write_json(os.path.join(cfg.workdir, "results.json"), results)
  return results


def _count(task: str, path: str) -> int:
  if task == "classify":
    return len(classify.read_table(path, need_label=True).rows)
  if task == "ner":
    return len(ner.read_conll(path, need_tags=True))
  return len(squad.read_questions(path))


def _baseline(cfg: FinetuneConfig, dev, train_labels) -> dict:
  """Dev metrics of the majority baseline (most frequent training label / all "O" / empty)."""
  if cfg.task == "classify":
    if cfg.regression:
      mean = float(np.mean([float(x) for x in train_labels]))
      return dev.score([str(mean)] * len(dev.table.rows))
    return classify.majority_baseline(train_labels,
                                      [g.strip() for g in dev.table.column("label")])
  if cfg.task == "ner":
    return ner.majority_baseline([s.tags for s in dev.sentences])
  return dev.score({q["id"]: "" for q in dev.questions})


def _settings_file(settings) -> dict:
  """The task settings `flaxbert predict` reads from a fine-tuned bundle."""
  return {predict_lib.SETTINGS_FILE: dataclasses.asdict(settings)}
