"""Recipe: BERT pretraining (MLM + NSP) on a BERT-format corpus.

Declares the text (the embedded default corpus, or files; held-out documents), the tokenizer
(trained SentencePiece BPE, or given), the model (a preset with its vocabulary rounded up to
128), the objective (training/objectives.pretraining), the held-out evaluation and the final
bundle. Continued pretraining (`init`) takes the model config, tokenizer and weights of a
bundle or HF BERT directory instead; they enter the loop as a fresh run's parameters. The run skeleton (training/run.py) and loop do the rest: identity, lock, resume,
metrics, checkpoints, SIGTERM, multi-host.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert import bundle as bundle_lib
from flaxbert.bundle import bert as bert_bundle
from flaxbert import sharding
from flaxbert.data import default_corpus, heldout, pipeline
from flaxbert.data import tokenizer as tokenizer_lib
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError
from flaxbert.inference.fill_mask import fill_mask
from flaxbert.jsonfile import read_json
from flaxbert.models.config import BertConfig, get_config
from flaxbert.models.factory import build_model, dummy_inputs
from flaxbert.recipes.configs import PretrainConfig
from flaxbert.training import objectives, optim
from flaxbert.training.metrics import flops_per_token
from flaxbert.training.run import Run, open_run
from flaxbert.training.step import make_eval_step, make_train_step

log = logging.getLogger("flaxbert")

KIND = "pretrain"
# The config fields `--set` may change in a run that starts from a checkpoint: they change how
# its weights are computed with (precision, kernels, memory, regularisation), not what they
# mean or their shapes.
INIT_SETTABLE = ("dtype", "attention_impl", "remat", "hidden_dropout", "attention_dropout")


def check(cfg: PretrainConfig, mesh) -> None:
  dp = sharding.data_parallel_size(mesh)
  if cfg.total_steps < 1 or cfg.batch_size < 1 or cfg.seq_len < 8:
    raise FlaxbertError("--steps and --batch-size must be positive and --seq-len at least 8")
  if cfg.batch_size % (dp * cfg.accum_steps):
    raise FlaxbertError(f"--batch-size {cfg.batch_size} must divide by data x fsdp "
                        f"({dp}) x accumulation steps ({cfg.accum_steps})")
  if cfg.batch_size % jax.process_count():
    raise FlaxbertError(f"--batch-size {cfg.batch_size} must divide among "
                        f"{jax.process_count()} processes")
  if cfg.init is not None:
    given = [flag for flag, value in (("--config", cfg.model), ("--tokenizer", cfg.tokenizer),
                                      ("--vocab-size", cfg.vocab_size),
                                      ("--lowercase", cfg.lowercase)) if value]
    if given:
      raise FlaxbertError(f"--init {cfg.init} brings its model config and tokenizer: "
                          f"{', '.join(given)} cannot be given with it")
  model_config(cfg)   # a bad --init/--config/--set or length: before any write


def model_config(cfg: PretrainConfig, vocab_size: int | None = None) -> BertConfig:
  """The run's model: the --init checkpoint's, or the preset's with the vocabulary of the
  tokenizer (`vocab_size`; None: the size the run trains)."""
  if cfg.init is not None:
    config = _init_config(cfg)
  else:
    config = get_config(cfg.model, **dict(cfg.overrides))
    # Round the vocabulary up to a multiple of 128: tensor-parallel shards divide it evenly
    # and the decoder matmul tiles well; the extra rows are never produced by the tokenizer.
    vocab_size = vocab_size or cfg.trained_vocab_size
    config = config.replace(vocab_size=-(-vocab_size // 128) * 128)
  if cfg.seq_len > config.max_position_embeddings:
    raise FlaxbertError(f"--seq-len {cfg.seq_len} exceeds the model's "
                        f"{config.max_position_embeddings} positions")
  return config


def _init_config(cfg: PretrainConfig) -> BertConfig:
  """The --init checkpoint's config (read without its weights) with the --set fields that
  keep those weights valid."""
  path = cfg.init
  if not os.path.isdir(path):
    raise FlaxbertError(f"--init {path}: no such bundle or checkpoint directory")
  meta = read_json(os.path.join(path, "config.json"))
  if meta.get("format") == bundle_lib.FORMAT and meta.get("model", "bert") != "bert":
    raise FlaxbertError(f"--init {path}: an encoder-decoder bundle; BERT pretraining "
                        "continues a BERT bundle or HF BERT checkpoint")
  config = bert_bundle.config_of(path, meta)
  overrides = dict(cfg.overrides)
  fixed = sorted(set(overrides) - set(INIT_SETTABLE))
  if fixed:
    raise FlaxbertError(f"--set {', '.join(fixed)}: a run from --init keeps its checkpoint's "
                        f"model; only {', '.join(INIT_SETTABLE)} may be set")
  return config.replace(**overrides)


def prepare_text(run: Run) -> tuple[list[str], list[str], str]:
  """(training files, held-out files, tokenizer dir), made once (process 0 first)."""
  cfg = run.cfg
  data_root = run.path("data")
  corpus = list(cfg.corpus)
  if not corpus:
    corpus = [run.prepare(
        lambda: default_corpus.write_default_corpus(os.path.join(data_root, "default_corpus")),
        "default-corpus")]
  if cfg.eval_corpus:
    train_files, eval_files = corpus, list(cfg.eval_corpus)
  else:
    train, held = run.prepare(
        lambda: heldout.split_heldout(corpus, os.path.join(data_root, "split")), "split")
    train_files, eval_files = [train], [held]

  def train_tokenizer(directory):
    log.info("flaxbert: training a %d-piece SentencePiece tokenizer on %s",
             cfg.trained_vocab_size, ", ".join(train_files))
    tokenizer_lib.train_sentencepiece(train_files, cfg.trained_vocab_size, directory,
                                      lowercase=cfg.lowercase, seed=cfg.seed)

  # A run from --init keeps its checkpoint's tokenizer (check() refuses --tokenizer with it).
  tokenizer_dir = run.tokenizer(copy_from=cfg.init or cfg.tokenizer, train=train_tokenizer)
  return train_files, eval_files, tokenizer_dir


def batches(cfg: PretrainConfig, workdir: str, files, tokenizer_dir, seed, **kwargs):
  return pipeline.pretraining_batches(
      files, tokenizer_dir, cfg.data_dir or os.path.join(workdir, "data", "prepared"),
      batch_size=cfg.batch_size, seq_length=cfg.seq_len, seed=seed,
      max_predictions=cfg.max_predictions, whole_word=cfg.whole_word, pack=cfg.pack, **kwargs)


def real_tokens(batch) -> int:
  """Non-padding tokens of a batch: tokens/s and MFU count useful work, so packed and
  padded runs compare directly."""
  return int(np.count_nonzero(batch["input_mask"]))


def pretrain(cfg: PretrainConfig) -> dict:
  """Runs (or resumes) BERT pretraining; returns the last logged metrics."""
  with open_run(cfg, KIND, check) as run:
    train_files, eval_files, tokenizer_dir = prepare_text(run)
    tokenizer = load_tokenizer(tokenizer_dir)
    config = model_config(cfg, tokenizer.vocab_size)
    run.record(model="bert", head="pretraining", model_config=config.to_dict())
    model = build_model(config, "pretraining")
    # The checkpoint's weights (heads it lacks made fresh, named in one log line). A resumed
    # run loads them too, but the loop starts from its own newest checkpoint instead.
    initial_params = None
    if cfg.init is not None:
      initial_params = bundle_lib.load(cfg.init, head="pretraining", seed=cfg.seed).params
    opt_cfg = cfg.optimizer_config()
    tx = optim.make_optimizer(opt_cfg)
    objective = objectives.pretraining(model)
    eval_step = jax.jit(make_eval_step(objective))
    # Both datasets are prepared by process 0 first.
    train_data = run.prepare(
        lambda: batches(cfg, run.workdir, train_files, tokenizer_dir, cfg.seed), "train-data")
    held_out = run.prepare(
        lambda: batches(cfg, run.workdir, eval_files, tokenizer_dir, cfg.seed + 1), "eval-data")
    held_out_start = held_out.get_state()

    def evaluate(params, step):
      held_out.set_state(held_out_start)   # the same held-out batches at every evaluation
      return run.evaluate_sums(eval_step, params,
                               (next(held_out) for _ in range(cfg.eval_batches)),
                               objective.summarise, "eval_")

    loop_cfg = run.loop_config(
        total_steps=cfg.total_steps, eval_every=cfg.eval_every,
        checkpoint_every=cfg.checkpoint_every, desc="pretrain",
        tokens_per_step=cfg.batch_size * cfg.seq_len,
        flops_per_token=flops_per_token(config, cfg.seq_len))
    result = run.train(
        loop_cfg, model=model, tx=tx, dummy_inputs=dummy_pretraining_inputs(),
        train_step=make_train_step(objective, tx, optim.learning_rate_schedule(opt_cfg),
                                   cfg.accum_steps),
        data=train_data, evaluate=evaluate, count_tokens=real_tokens,
        initial_params=initial_params)
    run.save_bundle("bundle", bundle_lib.Bundle(model, result.state.params, tokenizer, config,
                                                "pretraining"))
    last = dict(result.last_metrics)
    if "tokens_per_s" in last:
      last["seq_per_s"] = last["tokens_per_s"] / cfg.seq_len
    if run.is_main:
      last["fill_mask"] = held_out_fill_mask(run.path("bundle"), eval_files)
    return last


def held_out_example(eval_files, tokenizer, max_tokens: int) -> tuple[str, str] | None:
  """(a held-out sentence with one word masked, that word), to show what the trained model
  predicts on text it never saw: the first held-out line of 8 to 24 words that fits in
  `max_tokens` with [CLS] and [SEP], its lowercase word nearest the middle that is one
  vocabulary piece (so one prediction can be right). Chosen by rule, never by how well the
  model does on it."""
  for path in eval_files:
    with open(path, encoding="utf-8") as f:
      for line in f:
        words = line.split()
        if not 8 <= len(words) <= 24 or len(tokenizer.encode(" ".join(words))) + 2 > max_tokens:
          continue
        for i in sorted(range(len(words)), key=lambda i: abs(i - len(words) // 2)):
          word = words[i]
          if word.isalpha() and word.islower() and len(word) >= 3 \
              and len(tokenizer.encode(word)) == 1:
            return " ".join(words[:i] + [tokenizer_lib.MASK] + words[i + 1:]), word
  return None


def held_out_fill_mask(bundle_dir: str, eval_files, top_k: int = 5) -> dict | None:
  """The written bundle's top-k for `held_out_example` (read back from disk: process 0 alone,
  whatever the mesh), as {"text", "answer", "predictions": [[token, probability], ...]}."""
  bundle = bundle_lib.load(bundle_dir)
  example = held_out_example(eval_files, bundle.tokenizer,
                             bundle.config.max_position_embeddings)
  if example is None:
    return None
  text, answer = example
  candidates = fill_mask(bundle, [text], top_k=top_k)[0][0]
  return {"text": text, "answer": answer,
          "predictions": [[c["token"], c["score"]] for c in candidates]}


def dummy_pretraining_inputs() -> dict:
  return dict(dummy_inputs(), masked_positions=jnp.zeros((1, 2), jnp.int32))
