"""A BERT pretraining run: data -> sharded train step -> metrics -> checkpoints, resumable.

Re-running the same command resumes from the newest readable checkpoint: parameters, optimizer
state, step (the dropout RNG is derived from the stored key and the step) and the data
iterator's position all come back, so an interrupted run produces exactly the losses of an
uninterrupted one. SIGTERM saves a checkpoint and exits; a non-finite loss stops the run
before anything non-finite is saved.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json, write_json
from flaxbert.models.config import BertConfig, get_config
from flaxbert.models.factory import build_model, dummy_inputs
from flaxbert.training import loop, optim
from flaxbert import sharding as mesh_lib
from flaxbert.recipes.configs import PretrainConfig
from flaxbert.training.metrics import flops_per_token
from flaxbert.training.state import host_params
from flaxbert.training.step import make_eval_step, make_train_step, summarise

log = logging.getLogger("flaxbert")

RUN_CONFIG = "run_config.json"


def _check(cfg: PretrainConfig, mesh) -> None:
  dp = mesh_lib.data_parallel_size(mesh)
  if cfg.total_steps < 1 or cfg.batch_size < 1 or cfg.seq_len < 8:
    raise FlaxbertError("--steps and --batch-size must be positive and --seq-len at least 8")
  if cfg.batch_size % (dp * cfg.accum_steps):
    raise FlaxbertError(f"--batch-size {cfg.batch_size} must divide by data x fsdp "
                        f"({dp}) x accumulation steps ({cfg.accum_steps})")
  if cfg.batch_size % jax.process_count():
    raise FlaxbertError(f"--batch-size {cfg.batch_size} must divide among "
                        f"{jax.process_count()} processes")


def model_config(cfg: PretrainConfig, vocab_size: int) -> BertConfig:
  config = get_config(cfg.model, **dict(cfg.overrides))
  # Round the vocabulary up to a multiple of 128: tensor-parallel shards divide it evenly and
  # the decoder matmul tiles well; the extra rows are never produced by the tokenizer.
  config = config.replace(vocab_size=-(-vocab_size // 128) * 128)
  if cfg.seq_len > config.max_position_embeddings:
    raise FlaxbertError(f"--seq-len {cfg.seq_len} exceeds the model's "
                        f"{config.max_position_embeddings} positions")
  return config


def _on_process_zero_first(fn, name: str):
  """Runs fn on process 0, then (after a barrier) on the others, which find its result."""
  if jax.process_index() == 0:
    result = fn()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
  if jax.process_index() != 0:
    result = fn()
  return result


def prepare_text(cfg: PretrainConfig) -> tuple[list[str], list[str], str]:
  """(training files, held-out files, tokenizer dir), creating what is missing."""
  from flaxbert.data import default_corpus, heldout, tokenizer as tokenizer_lib
  data_root = os.path.join(cfg.workdir, "data")
  corpus = list(cfg.corpus)
  if not corpus:
    corpus = [_on_process_zero_first(
        lambda: default_corpus.write_default_corpus(os.path.join(data_root, "default_corpus")),
        "default-corpus")]
  if cfg.eval_corpus:
    train_files, eval_files = corpus, list(cfg.eval_corpus)
  else:
    train, held = _on_process_zero_first(
        lambda: heldout.split_heldout(corpus, os.path.join(data_root, "split")), "split")
    train_files, eval_files = [train], [held]
  tokenizer_dir = os.path.join(cfg.workdir, "tokenizer")
  if cfg.tokenizer:
    source = cfg.tokenizer

    def copy_tokenizer():
      tokenizer_lib.load_tokenizer(source).save(tokenizer_dir)
      return tokenizer_dir
    _on_process_zero_first(copy_tokenizer, "tokenizer")
  elif not os.path.isdir(tokenizer_dir):
    def train_tokenizer():
      if not os.path.isdir(tokenizer_dir):
        log.info("flaxbert: training a %d-piece SentencePiece tokenizer on %s", cfg.vocab_size,
                 ", ".join(train_files))
        tokenizer_lib.train_sentencepiece(train_files, cfg.vocab_size, tokenizer_dir + ".tmp",
                                          lowercase=cfg.lowercase, seed=cfg.seed)
        os.replace(tokenizer_dir + ".tmp", tokenizer_dir)
      return tokenizer_dir
    _on_process_zero_first(train_tokenizer, "tokenizer")
  return train_files, eval_files, tokenizer_dir


def _batches(cfg, files, tokenizer_dir, seed, **kwargs):
  from flaxbert.data.pipeline import pretraining_batches
  return pretraining_batches(
      files, tokenizer_dir, cfg.data_dir or os.path.join(cfg.workdir, "data", "prepared"),
      batch_size=cfg.batch_size, seq_length=cfg.seq_len, seed=seed,
      max_predictions=cfg.max_predictions, whole_word=cfg.whole_word, pack=cfg.pack, **kwargs)


def pretrain(cfg: PretrainConfig) -> dict:
  """Runs (or resumes) pretraining; returns the last logged metrics."""
  os.makedirs(cfg.workdir, exist_ok=True)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  _check(cfg, mesh)
  train_files, eval_files, tokenizer_dir = prepare_text(cfg)
  from flaxbert.data.tokenizer import load_tokenizer
  config = model_config(cfg, load_tokenizer(tokenizer_dir).vocab_size)
  _write_run_config(cfg, config)
  model = build_model(config, "pretraining")
  opt_cfg = cfg.optimizer_config()
  tx = optim.make_optimizer(opt_cfg)
  eval_step = jax.jit(make_eval_step(model))

  def evaluate(params, step):
    return _evaluate(cfg, eval_step, params, eval_files, tokenizer_dir, mesh)

  loop_cfg = loop.LoopConfig(
      workdir=cfg.workdir, total_steps=cfg.total_steps, log_every=cfg.log_every,
      eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every,
      keep_checkpoints=cfg.keep_checkpoints, async_checkpoints=cfg.async_checkpoints,
      progress=cfg.progress, desc="pretrain", seed=cfg.seed,
      tokens_per_step=cfg.batch_size * cfg.seq_len,
      flops_per_token=flops_per_token(config, cfg.seq_len))
  result = loop.run(
      loop_cfg, model=model, tx=tx, mesh=mesh,
      dummy_inputs=dict(dummy_inputs(), masked_positions=jnp.zeros((1, 2), jnp.int32)),
      train_step=make_train_step(model, tx, optim.learning_rate_schedule(opt_cfg),
                                 cfg.accum_steps),
      data=_batches(cfg, train_files, tokenizer_dir, cfg.seed), evaluate=evaluate,
      count_tokens=real_tokens)
  params = host_params(result.state.params)  # a collective: every process takes part
  if jax.process_index() == 0:
    export_bundle(cfg.workdir, os.path.join(cfg.workdir, "bundle"), params=params)
  last = dict(result.last_metrics)
  if "tokens_per_s" in last:
    last["seq_per_s"] = last["tokens_per_s"] / cfg.seq_len
  return last


def real_tokens(batch) -> int:
  """Non-padding tokens of a batch: tokens/s and MFU count useful work, so packed and
  padded runs compare directly."""
  return int(np.count_nonzero(batch["input_mask"]))


def _evaluate(cfg, eval_step, params, eval_files, tokenizer_dir, mesh) -> dict:
  """MLM/NSP metrics on a fixed set of held-out batches (the same ones at every evaluation)."""
  batches = _batches(cfg, eval_files, tokenizer_dir, cfg.seed + 1)
  totals = None
  for _ in range(cfg.eval_batches):
    sums = eval_step(params, mesh_lib.global_batch(next(batches), mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return {f"eval_{k}": float(v) for k, v in summarise(jax.device_get(totals)).items()}


def _write_run_config(cfg: PretrainConfig, config: BertConfig) -> None:
  if jax.process_index() == 0:
    write_json(os.path.join(cfg.workdir, RUN_CONFIG), {
        "model_config": config.to_dict(), "head": "pretraining",
        "run": {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(cfg).items()}})


def export_bundle(workdir: str, out: str, params=None) -> str:
  """Writes the bundle of a run's latest checkpoint (or of `params`) to `out`."""
  from flaxbert.data.tokenizer import load_tokenizer
  from flaxbert import bundle as bundle_lib
  run = read_json(os.path.join(workdir, RUN_CONFIG))
  # Encoder-decoder runs (span-corruption pretraining, seq2seq fine-tuning) write a
  # model_config of EncDecConfig fields.
  encdec = "num_encoder_layers" in run.get("model_config", {})
  if encdec:
    from flaxbert.models.encdec import EncDecModel
    from flaxbert.models.encdec_config import EncDecConfig
    config = EncDecConfig.from_dict(run["model_config"])
    model = EncDecModel(config)
  else:
    config = BertConfig.from_dict(run["model_config"])
    model = build_model(config, run.get("head", "pretraining"))
  if params is None:
    params = _latest_params(workdir, model)
  params = jax.tree.map(np.asarray, params)
  tokenizer = load_tokenizer(os.path.join(workdir, "tokenizer"))
  if os.path.isdir(out) and os.path.abspath(out) == os.path.abspath(
      os.path.join(workdir, "bundle")):
    shutil.rmtree(out)  # the run's own final bundle is regenerated, never a user's directory
  if encdec:
    bundle_lib.save(out, bundle_lib.Bundle(model, params, tokenizer, config,
                                              "seq2seq"))
  else:
    bundle_lib.save(out, bundle_lib.Bundle(model, params, tokenizer, config, "pretraining"))
  return out


def _latest_params(workdir: str, model):
  import orbax.checkpoint as ocp
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  manager = ocp.CheckpointManager(directory)
  step = manager.latest_step()
  if step is None:
    raise FlaxbertError(f"{workdir}: no checkpoint to export")
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return restored["state"]["params"]
