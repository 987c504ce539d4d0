"""Encoder-decoder launchers on the shared loop (training/loop.py): span-corruption
pretraining (`flaxbert pretrain --model encdec`) and seq2seq fine-tuning on TSV pairs
(`flaxbert finetune seq2seq`). Both get the loop's mesh sharding, Orbax checkpoints with exact
resume, metrics.jsonl/TensorBoard, progress, SIGTERM and non-finite-loss handling.

Fine-tuning evaluates on the dev set every `eval_every` steps: label-smoothed loss, then
greedy decoding scored with sacrebleu (BLEU, chrF) against the dev targets as written in the
TSV; the predictions are written to WORKDIR/predictions/dev_greedy_step{N}.txt and the
best-BLEU parameters to WORKDIR/best. At the last step beam search is scored too
(dev_beam{K}_step{N}.txt). WORKDIR/bundle holds the final parameters.

With `init` (a bundle, e.g. from encdec pretraining), its tokenizer, config and parameters
are used; the loop places the parameters (initial_params) when the run has no checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json, write_json
from flaxbert.models import encdec
from flaxbert.models.encdec_config import EncDecConfig, get_config
from flaxbert.training import loop, optim
from flaxbert import sharding as mesh_lib
from flaxbert.recipes.configs import Seq2SeqConfig
from flaxbert.training import seq2seq_step
from flaxbert.recipes.bert_pretrain import PretrainConfig, prepare_text
from flaxbert.training.state import host_params

log = logging.getLogger("flaxbert")


def _check(cfg: Seq2SeqConfig, mesh) -> None:
  dp = mesh_lib.data_parallel_size(mesh)
  if cfg.steps < 1 or cfg.batch_size < 1:
    raise FlaxbertError("--steps and --batch-size must be positive")
  if cfg.batch_size % dp:
    raise FlaxbertError(f"--batch-size {cfg.batch_size} must divide by data x fsdp ({dp})")
  if min(cfg.max_source_length, cfg.max_target_length) < 2:
    raise FlaxbertError("--max-source-length and --max-target-length must be at least 2")
  if not 0.0 <= cfg.label_smoothing < 1.0:
    raise FlaxbertError("--label-smoothing must be in [0, 1)")


def _tokenizer_dir(cfg: Seq2SeqConfig):
  """WORKDIR/tokenizer: the init bundle's, or a BPE model trained on both TSV columns."""
  from flaxbert.data import readers
  from flaxbert.data.tokenizer import load_tokenizer, train_sentencepiece
  directory = os.path.join(cfg.workdir, "tokenizer")
  if os.path.isdir(directory):
    return directory
  if cfg.init:
    load_tokenizer(os.path.join(cfg.init, "tokenizer")).save(directory + ".tmp")
  else:
    with tempfile.TemporaryDirectory() as tmp:
      text = os.path.join(tmp, "both_sides.txt")
      with open(text, "w", encoding="utf-8") as f:
        for _, fields in readers.read_tsv(cfg.train, (2,)):
          f.write(fields[0] + "\n" + fields[1] + "\n")
      log.info("flaxbert: training a %d-piece SentencePiece BPE tokenizer on both sides of %s",
               cfg.vocab_size, cfg.train)
      train_sentencepiece([text], cfg.vocab_size, directory + ".tmp", seed=cfg.seed)
  os.replace(directory + ".tmp", directory)
  return directory


def model_config(name: str, overrides, tokenizer, vocab_size: int | None = None
                 ) -> EncDecConfig:
  vocab = vocab_size or -(-tokenizer.vocab_size // 128) * 128
  return get_config(name, **dict(overrides)).replace(
      vocab_size=vocab, pad_token_id=tokenizer.pad_id, decoder_start_id=tokenizer.cls_id,
      eos_token_id=tokenizer.sep_id)


def dev_pairs(path: str, limit: int | None = None) -> tuple[list[str], list[str]]:
  from flaxbert.data import readers
  sources, targets = [], []
  for _, fields in readers.read_tsv(path, (2,)):
    sources.append(fields[0])
    targets.append(fields[1])
    if limit is not None and len(sources) >= limit:
      break
  return sources, targets


def score(hypotheses, references) -> dict:
  """sacrebleu corpus BLEU and chrF (default settings: 13a tokenisation, chrF n=6 beta=2)."""
  import sacrebleu
  return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
          "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score}


def real_tokens(batch: dict) -> int:
  """Non-padding source + target tokens of a batch (for tokens/s)."""
  return int(batch["source_mask"].sum() + batch["target_mask"].sum())


def finetune_seq2seq(cfg: Seq2SeqConfig) -> dict:
  """Trains (or resumes) on source<TAB>target pairs; returns the last metrics."""
  from flaxbert.data.pipeline import finetune_data
  from flaxbert.data.tokenizer import load_tokenizer
  from flaxbert import bundle as bundle_lib
  from flaxbert.tasks.seq2seq import translate, write_lines
  os.makedirs(cfg.workdir, exist_ok=True)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  _check(cfg, mesh)
  tokenizer_dir = _tokenizer_dir(cfg)
  tokenizer = load_tokenizer(tokenizer_dir)
  init = bundle_lib.load_encdec_bundle(cfg.init) if cfg.init else None
  if init is not None:
    config = init.config.replace(**dict(cfg.overrides))
  else:
    config = model_config(cfg.model, cfg.overrides, tokenizer)
  write_json(os.path.join(cfg.workdir, "run_config.json"), {
      "model_config": config.to_dict(),
      "run": {k: list(v) if isinstance(v, tuple) else v
              for k, v in dataclasses.asdict(cfg).items()}})
  data = finetune_data("seq2seq", {"train": cfg.train, "dev": cfg.dev}, tokenizer_dir,
                       os.path.join(cfg.workdir, "data"),
                       max_source_length=cfg.max_source_length,
                       max_target_length=cfg.max_target_length)
  model = encdec.EncDecModel(config)
  opt_cfg = optim.OptimizerConfig(
      learning_rate=cfg.learning_rate, total_steps=cfg.steps,
      warmup_steps=cfg.warmup_steps if cfg.warmup_steps is not None else cfg.steps // 10,
      weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm, b2=0.98, eps=1e-9)
  tx = optim.make_optimizer(opt_cfg)
  dummy = encdec.dummy_inputs()
  train_batches = data.batches("train", batch_size=cfg.batch_size, seed=cfg.seed,
                               bucket_by_length=cfg.bucket_by_length)
  eval_step = jax.jit(seq2seq_step.make_eval_step(model, cfg.label_smoothing))
  sources, references = dev_pairs(cfg.dev, cfg.eval_examples)
  best_path = os.path.join(cfg.workdir, "best")
  best_file = os.path.join(best_path, "config.json")
  best = {"bleu": read_json(best_file).get("dev_bleu", -1.0) if os.path.isfile(best_file)
          else -1.0}

  def decode_dev(params, beam: int, step: int) -> dict:
    start = time.perf_counter()
    hypotheses, tokens = translate(model, params, tokenizer, sources,
                                   max_source_length=cfg.max_source_length,
                                   max_length=cfg.max_target_length, beam_size=beam,
                                   alpha=cfg.alpha, batch_size=cfg.decode_batch_size)
    seconds = time.perf_counter() - start
    name = "greedy" if beam <= 1 else f"beam{beam}"
    write_lines(os.path.join(cfg.workdir, "predictions", f"dev_{name}_step{step}.txt"),
                hypotheses)
    scores = score(hypotheses, references)
    return {f"dev_bleu_{name}": scores["bleu"], f"dev_chrf_{name}": scores["chrf"],
            f"dev_decode_tokens_per_s_{name}": tokens / seconds}

  def evaluate(params, step: int) -> dict:
    sums = None
    with jax.set_mesh(mesh):
      for batch in data.batches("dev", batch_size=cfg.batch_size, shuffle=False, num_epochs=1,
                                drop_remainder=False):
        s = eval_step(params, mesh_lib.global_batch(batch, mesh))
        sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
    metrics = {f"dev_{k}": float(v)
               for k, v in seq2seq_step.summarise(jax.device_get(sums)).items()}
    host = host_params(params)
    metrics.update(decode_dev(host, 1, step))
    if step == cfg.steps and cfg.beam_size > 1:
      metrics.update(decode_dev(host, cfg.beam_size, step))
    if metrics["dev_bleu_greedy"] > best["bleu"] and jax.process_index() == 0:
      best["bleu"] = metrics["dev_bleu_greedy"]
      bundle_lib.replace(best_path, bundle_lib.Bundle(model, host, tokenizer, config,
                                                         "seq2seq"),
                            extra={"dev_bleu": best["bleu"], "step": step})
    return metrics

  loop_cfg = loop.LoopConfig(
      workdir=cfg.workdir, total_steps=cfg.steps, log_every=cfg.log_every,
      eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every,
      keep_checkpoints=cfg.keep_checkpoints, async_checkpoints=cfg.async_checkpoints,
      progress=cfg.progress, desc="seq2seq", seed=cfg.seed,
      tokens_per_step=cfg.batch_size * (cfg.max_source_length + cfg.max_target_length))
  result = loop.run(loop_cfg, model=model, tx=tx, mesh=mesh, dummy_inputs=dummy,
                    train_step=seq2seq_step.make_train_step(
                        model, tx, optim.learning_rate_schedule(opt_cfg), cfg.label_smoothing),
                    data=train_batches, evaluate=evaluate, count_tokens=real_tokens,
                    initial_params=init.params if init is not None else None)
  params = host_params(result.state.params)
  if jax.process_index() == 0:
    bundle_lib.replace(os.path.join(cfg.workdir, "bundle"),
                          bundle_lib.Bundle(model, params, tokenizer, config, "seq2seq"))
  return dict(result.last_metrics)


# --- span-corruption pretraining ------------------------------------------------------------

def pretrain_encdec(cfg: PretrainConfig) -> dict:
  """`flaxbert pretrain --model encdec`: the BERT launcher's settings (corpus, tokenizer,
  steps, batch, mesh, optimizer, checkpoints) with span corruption over chunks of
  `seq_len` tokens; `cfg.model` names an encoder-decoder preset."""
  from flaxbert.data import span_corruption
  from flaxbert.data.tokenizer import load_tokenizer
  from flaxbert import bundle as bundle_lib
  if cfg.accum_steps != 1 or cfg.whole_word or cfg.max_predictions or cfg.pack:
    raise FlaxbertError("--accum-steps, --whole-word, --max-predictions and --pack are "
                        "BERT-only")
  os.makedirs(cfg.workdir, exist_ok=True)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  if cfg.total_steps < 1 or cfg.batch_size % mesh_lib.data_parallel_size(mesh):
    raise FlaxbertError(f"--batch-size {cfg.batch_size} must divide by data x fsdp "
                        f"({mesh_lib.data_parallel_size(mesh)}) and --steps be positive")
  train_files, eval_files, tokenizer_dir = prepare_text(cfg)
  tokenizer = load_tokenizer(tokenizer_dir)
  config = model_config(cfg.model, cfg.overrides, tokenizer,
                        span_corruption.model_vocab_size(tokenizer.vocab_size, cfg.seq_len))
  write_json(os.path.join(cfg.workdir, "run_config.json"), {
      "model": "encdec", "model_config": config.to_dict(), "objective": "span_corruption",
      "run": {k: list(v) if isinstance(v, tuple) else v
              for k, v in dataclasses.asdict(cfg).items()}})
  model = encdec.EncDecModel(config)
  opt_cfg = cfg.optimizer_config()
  tx = optim.make_optimizer(opt_cfg)
  data_dir = cfg.data_dir or os.path.join(cfg.workdir, "data", "prepared")

  def batches(files, seed):
    return span_corruption.span_corruption_batches(
        files, tokenizer_dir, data_dir, batch_size=cfg.batch_size, chunk_length=cfg.seq_len,
        seed=seed)

  eval_step = jax.jit(seq2seq_step.make_eval_step(model, 0.0))

  def evaluate(params, step):
    held_out = batches(eval_files, cfg.seed + 1)   # the same batches at every evaluation
    sums = None
    with jax.set_mesh(mesh):
      for _ in range(cfg.eval_batches):
        s = eval_step(params, mesh_lib.global_batch(next(held_out), mesh))
        sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
    return {f"eval_{k}": float(v)
            for k, v in seq2seq_step.summarise(jax.device_get(sums)).items()}

  source_len, target_len = span_corruption.corrupted_lengths(cfg.seq_len)
  loop_cfg = loop.LoopConfig(
      workdir=cfg.workdir, total_steps=cfg.total_steps, log_every=cfg.log_every,
      eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every,
      keep_checkpoints=cfg.keep_checkpoints, async_checkpoints=cfg.async_checkpoints,
      progress=cfg.progress, desc="pretrain encdec", seed=cfg.seed,
      tokens_per_step=cfg.batch_size * (source_len + target_len))
  result = loop.run(loop_cfg, model=model, tx=tx, mesh=mesh,
                    dummy_inputs=encdec.dummy_inputs(),
                    train_step=seq2seq_step.make_train_step(
                        model, tx, optim.learning_rate_schedule(opt_cfg), 0.0),
                    data=batches(train_files, cfg.seed), evaluate=evaluate)
  params = host_params(result.state.params)
  if jax.process_index() == 0:
    bundle_lib.replace(os.path.join(cfg.workdir, "bundle"),
                          bundle_lib.Bundle(model, params, tokenizer, config, "seq2seq"))
  return dict(result.last_metrics)
