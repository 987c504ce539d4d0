"""Recipe: sequence-to-sequence fine-tuning of the encoder-decoder on source<TAB>target pairs
(`flaxbert finetune seq2seq`).

Declares the tokenizer (the init bundle's, or SentencePiece BPE over both sides), the model
(a preset or the init bundle's config), the objective (label-smoothed cross-entropy), the dev
evaluation (loss, then greedy decoding scored with sacrebleu BLEU and chrF; beam search too
at the last step) and the bundles: the best-BLEU parameters in WORKDIR/best, the final ones in
WORKDIR/bundle. Dev predictions go to WORKDIR/predictions/dev_{greedy,beamK}_step{N}.txt.
The run skeleton (training/run.py) does the rest.
"""

from __future__ import annotations

import logging
import os
import random
import time

import jax

from flaxbert import bundle as bundle_lib
from flaxbert import sharding
from flaxbert.data import readers
from flaxbert.data.pipeline import finetune_data
from flaxbert.data.tokenizer import load_tokenizer, train_sentencepiece
from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json
from flaxbert.models import encdec
from flaxbert.models.encdec_config import EncDecConfig, get_config
from flaxbert.recipes.configs import Seq2SeqConfig
from flaxbert.tasks.seq2seq import read_texts, score, translate, write_lines
from flaxbert.training import objectives, optim
from flaxbert.training.run import Run, open_run
from flaxbert.training.state import host_params
from flaxbert.training.step import make_eval_step, make_train_step

log = logging.getLogger("flaxbert")

KIND = "finetune-seq2seq"


def check(cfg: Seq2SeqConfig, mesh) -> None:
  dp = sharding.data_parallel_size(mesh)
  if cfg.steps < 1 or cfg.batch_size < 1:
    raise FlaxbertError("--steps and --batch-size must be positive")
  if cfg.accum_steps < 1 or cfg.batch_size % (dp * cfg.accum_steps):
    raise FlaxbertError(f"--batch-size {cfg.batch_size} must divide by data x fsdp ({dp}) x "
                        f"accumulation steps ({cfg.accum_steps})")
  if min(cfg.max_source_length, cfg.max_target_length) < 2:
    raise FlaxbertError("--max-source-length and --max-target-length must be at least 2")
  if not 0.0 <= cfg.label_smoothing < 1.0:
    raise FlaxbertError("--label-smoothing must be in [0, 1)")
  if cfg.max_train_examples is not None and cfg.max_train_examples < 1:
    raise FlaxbertError("--max-train-examples must be positive")


def model_config(name: str, overrides, tokenizer, vocab_size: int | None = None
                 ) -> EncDecConfig:
  vocab = vocab_size or -(-tokenizer.vocab_size // 128) * 128
  return get_config(name, **dict(overrides)).replace(
      vocab_size=vocab, pad_token_id=tokenizer.pad_id, decoder_start_id=tokenizer.cls_id,
      eos_token_id=tokenizer.sep_id)


def real_tokens(batch: dict) -> int:
  """Non-padding source + target tokens of a batch (for tokens/s)."""
  return int(batch["source_mask"].sum() + batch["target_mask"].sum())


def _train_file(run: Run) -> str:
  """The training TSV, or a seeded random subset of it (WORKDIR/data/train_subset.tsv)."""
  cfg = run.cfg
  if cfg.max_train_examples is None:
    return cfg.train
  subset = run.path("data", "train_subset.tsv")

  def write():
    if os.path.isfile(subset):
      return
    rows = [fields for _, fields in readers.read_tsv(cfg.train, (2,))]
    if cfg.max_train_examples < len(rows):
      keep = sorted(random.Random(cfg.seed).sample(range(len(rows)), cfg.max_train_examples))
      rows = [rows[i] for i in keep]
    os.makedirs(os.path.dirname(subset), exist_ok=True)
    with open(subset + ".partial", "w", encoding="utf-8") as f:
      f.write("source\ttarget\n")
      f.writelines("\t".join(r) + "\n" for r in rows)
    os.replace(subset + ".partial", subset)

  run.prepare(write, "train-subset")
  return subset


def _tokenizer(run: Run, train_file: str) -> str:
  """WORKDIR/tokenizer: the init bundle's, or a BPE model trained on both TSV columns."""
  cfg = run.cfg

  def train(directory):
    text = os.path.join(directory, "both_sides.txt")
    with open(text, "w", encoding="utf-8") as f:
      for _, fields in readers.read_tsv(train_file, (2,)):
        f.write(fields[0] + "\n" + fields[1] + "\n")
    log.info("flaxbert: training a %d-piece SentencePiece BPE tokenizer on both sides of %s",
             cfg.vocab_size, train_file)
    train_sentencepiece([text], cfg.vocab_size, directory, seed=cfg.seed)
    os.remove(text)

  return run.tokenizer(copy_from=cfg.init, train=None if cfg.init else train)


def finetune_seq2seq(cfg: Seq2SeqConfig) -> dict:
  """Trains (or resumes) on source<TAB>target pairs; returns the last metrics."""
  with open_run(cfg, KIND, check) as run:
    train_file = _train_file(run)
    tokenizer_dir = _tokenizer(run, train_file)
    tokenizer = load_tokenizer(tokenizer_dir)
    init = bundle_lib.load_encdec_bundle(cfg.init) if cfg.init else None
    if init is not None:
      config = init.config.replace(**dict(cfg.overrides))
    else:
      config = model_config(cfg.model, cfg.overrides, tokenizer)
    run.record(model="encdec", head="seq2seq", model_config=config.to_dict())
    data = run.prepare(lambda: finetune_data(
        "seq2seq", {"train": train_file, "dev": cfg.dev}, tokenizer_dir, run.path("data"),
        max_source_length=cfg.max_source_length, max_target_length=cfg.max_target_length),
                       "data")
    model = encdec.EncDecModel(config)
    opt_cfg = optim.OptimizerConfig(
        learning_rate=cfg.learning_rate, total_steps=cfg.steps,
        warmup_steps=cfg.warmup_steps if cfg.warmup_steps is not None else cfg.steps // 10,
        weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm, b2=0.98, eps=1e-9)
    tx = optim.make_optimizer(opt_cfg)
    objective = objectives.seq2seq(model, cfg.label_smoothing)
    eval_step = jax.jit(make_eval_step(objective))
    sources, references = read_texts(cfg.dev)
    if references is None:
      raise FlaxbertError(f"{cfg.dev}: expected source<TAB>target pairs")
    sources, references = sources[:cfg.eval_examples], references[:cfg.eval_examples]
    best_config = run.path("best", "config.json")
    best = {"bleu": read_json(best_config).get("dev_bleu", -1.0)
            if os.path.isfile(best_config) else -1.0}

    def decode_dev(params, beam: int, step: int) -> dict:
      start = time.perf_counter()
      hypotheses, tokens = translate(model, params, tokenizer, sources,
                                     max_source_length=cfg.max_source_length,
                                     max_length=cfg.max_target_length, beam_size=beam,
                                     alpha=cfg.alpha, batch_size=cfg.decode_batch_size)
      seconds = time.perf_counter() - start
      name = "greedy" if beam <= 1 else f"beam{beam}"
      if run.is_main:
        write_lines(run.path("predictions", f"dev_{name}_step{step}.txt"), hypotheses)
      scores = score(hypotheses, references)
      return {f"dev_bleu_{name}": scores["bleu"], f"dev_chrf_{name}": scores["chrf"],
              f"dev_decode_tokens_per_s_{name}": tokens / seconds}

    def evaluate(params, step: int) -> dict:
      metrics = run.evaluate_sums(
          eval_step, params,
          data.batches("dev", batch_size=cfg.batch_size, shuffle=False, num_epochs=1,
                       drop_remainder=False),
          objective.summarise, "dev_")
      host = host_params(params)
      metrics.update(decode_dev(host, 1, step))
      if step == cfg.steps and cfg.beam_size > 1:
        metrics.update(decode_dev(host, cfg.beam_size, step))
      if metrics["dev_bleu_greedy"] > best["bleu"]:
        best["bleu"] = metrics["dev_bleu_greedy"]
        run.save_bundle("best", bundle_lib.Bundle(model, host, tokenizer, config, "seq2seq"),
                        extra={"dev_bleu": best["bleu"], "step": step})
      return metrics

    loop_cfg = run.loop_config(
        total_steps=cfg.steps, eval_every=cfg.eval_every,
        checkpoint_every=cfg.checkpoint_every, desc="seq2seq",
        tokens_per_step=cfg.batch_size * (cfg.max_source_length + cfg.max_target_length))
    result = run.train(
        loop_cfg, model=model, tx=tx, dummy_inputs=encdec.dummy_inputs(),
        train_step=make_train_step(objective, tx, optim.learning_rate_schedule(opt_cfg),
                                   cfg.accum_steps),
        data=data.batches("train", batch_size=cfg.batch_size, seed=cfg.seed,
                          bucket_by_length=cfg.bucket_by_length),
        evaluate=evaluate, count_tokens=real_tokens,
        initial_params=init.params if init is not None else None)
    run.save_bundle("bundle", bundle_lib.Bundle(model, result.state.params, tokenizer, config,
                                                "seq2seq"))
    return dict(result.last_metrics)
