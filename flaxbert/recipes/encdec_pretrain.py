"""Recipe: encoder-decoder pretraining with T5 span corruption (`flaxbert pretrain --model
encdec`): the BERT recipe's settings (corpus, tokenizer, steps, batch, mesh, optimizer,
checkpoints) over chunks of `seq_len` tokens; `cfg.model` names an encoder-decoder preset.
"""

from __future__ import annotations

import jax

from flaxbert import bundle as bundle_lib
from flaxbert import sharding
from flaxbert.data import span_corruption
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError
from flaxbert.models import encdec
from flaxbert.recipes.bert_pretrain import PretrainConfig, prepare_text
from flaxbert.recipes.seq2seq import model_config
from flaxbert.training import objectives, optim
from flaxbert.training.run import open_run
from flaxbert.training.step import make_eval_step, make_train_step

KIND = "pretrain-encdec"


def check(cfg: PretrainConfig, mesh) -> None:
  if cfg.whole_word or cfg.max_predictions or cfg.pack:
    raise FlaxbertError("--whole-word, --max-predictions and --pack are BERT-only")
  dp = sharding.data_parallel_size(mesh)
  if cfg.total_steps < 1 or cfg.accum_steps < 1 or cfg.batch_size % (dp * cfg.accum_steps):
    raise FlaxbertError(f"--batch-size {cfg.batch_size} must divide by data x fsdp ({dp}) x "
                        f"accumulation steps ({cfg.accum_steps}) and --steps be positive")


def pretrain_encdec(cfg: PretrainConfig) -> dict:
  """Runs (or resumes) span-corruption pretraining; returns the last logged metrics."""
  with open_run(cfg, KIND, check) as run:
    train_files, eval_files, tokenizer_dir = prepare_text(run)
    tokenizer = load_tokenizer(tokenizer_dir)
    config = model_config(cfg.model, cfg.overrides, tokenizer,
                          span_corruption.model_vocab_size(tokenizer.vocab_size, cfg.seq_len))
    run.record(model="encdec", head="seq2seq", objective="span_corruption",
               model_config=config.to_dict())
    model = encdec.EncDecModel(config)
    opt_cfg = cfg.optimizer_config()
    tx = optim.make_optimizer(opt_cfg)
    data_dir = cfg.data_dir or run.path("data", "prepared")

    def batches(files, seed):
      return span_corruption.span_corruption_batches(
          files, tokenizer_dir, data_dir, batch_size=cfg.batch_size, chunk_length=cfg.seq_len,
          seed=seed)

    train_data = run.prepare(lambda: batches(train_files, cfg.seed), "train-data")
    held_out = run.prepare(lambda: batches(eval_files, cfg.seed + 1), "eval-data")
    held_out_start = held_out.get_state()
    objective = objectives.seq2seq(model, 0.0)
    eval_step = jax.jit(make_eval_step(objective))

    def evaluate(params, step):
      held_out.set_state(held_out_start)   # the same held-out batches at every evaluation
      return run.evaluate_sums(eval_step, params,
                               (next(held_out) for _ in range(cfg.eval_batches)),
                               objective.summarise, "eval_")

    source_len, target_len = span_corruption.corrupted_lengths(cfg.seq_len)
    loop_cfg = run.loop_config(
        total_steps=cfg.total_steps, eval_every=cfg.eval_every,
        checkpoint_every=cfg.checkpoint_every, desc="pretrain encdec",
        tokens_per_step=cfg.batch_size * (source_len + target_len))
    result = run.train(
        loop_cfg, model=model, tx=tx, dummy_inputs=encdec.dummy_inputs(),
        train_step=make_train_step(objective, tx, optim.learning_rate_schedule(opt_cfg),
                                   cfg.accum_steps),
        data=train_data, evaluate=evaluate)
    run.save_bundle("bundle", bundle_lib.Bundle(model, result.state.params, tokenizer, config,
                                                "seq2seq"))
    return dict(result.last_metrics)
