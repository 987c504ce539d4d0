"""`flaxbert finetune classify`: sentence or sentence-pair classification / regression."""

from __future__ import annotations

import argparse


def add_common_arguments(p: argparse.ArgumentParser, train_help: str) -> None:
  p.add_argument("--train", required=True, help=train_help)
  p.add_argument("--dev", required=True, help="development file, same format")
  p.add_argument("--init", required=True, metavar="BUNDLE_OR_HF_DIR",
                 help="flaxbert bundle or HF BERT checkpoint to start from")
  p.add_argument("--workdir", required=True,
                 help="run directory: checkpoints, metrics.jsonl, best/, bundle/, predictions/")
  p.add_argument("--epochs", type=float, default=3.0)
  p.add_argument("--batch-size", type=int, default=32, help="global batch size")
  p.add_argument("--eval-batch-size", type=int, default=64)
  p.add_argument("--max-length", type=int, default=128, help="tokens per row (default 128)")
  p.add_argument("--lr", type=float, default=5e-5, help="peak AdamW learning rate")
  p.add_argument("--warmup-ratio", type=float, default=0.1,
                 help="fraction of steps of linear warmup, then linear decay to 0")
  p.add_argument("--weight-decay", type=float, default=0.01)
  p.add_argument("--clip-norm", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max-train-examples", type=int, metavar="N",
                 help="train on a seeded random subset of N examples")
  p.add_argument("--max-dev-examples", type=int, metavar="N",
                 help="score on the first N dev examples")
  p.add_argument("--mesh", help="data=D,fsdp=F,tensor=T (default: all devices on data)")
  p.add_argument("--log-every", type=int, default=10)
  p.add_argument("--checkpoint-every", type=int, help="steps (default: once per epoch)")
  p.add_argument("--keep-checkpoints", type=int, default=2)
  p.add_argument("--sync-checkpoints", action="store_true", help="save synchronously")
  p.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(task: str, args, **extra):
  from flaxbert.recipes.finetune import FinetuneConfig
  return FinetuneConfig(
      task=task, train=args.train, dev=args.dev, init=args.init, workdir=args.workdir,
      epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
      max_seq_length=args.max_length, learning_rate=args.lr, warmup_ratio=args.warmup_ratio,
      weight_decay=args.weight_decay, clip_norm=args.clip_norm, seed=args.seed,
      max_train_examples=args.max_train_examples, max_dev_examples=args.max_dev_examples,
      mesh=args.mesh, log_every=args.log_every, checkpoint_every=args.checkpoint_every,
      keep_checkpoints=args.keep_checkpoints, async_checkpoints=not args.sync_checkpoints,
      progress=not args.quiet, **extra)


def run_and_report(cfg) -> None:
  import jax
  from flaxbert.recipes.finetune import finetune
  results = finetune(cfg)
  if jax.process_index() == 0:
    best = results["best"]
    base = results["majority_baseline"].get(cfg.metric)
    print(f"fine-tuning done: best dev {cfg.metric} {best['score']:.4f} at step {best['step']} "
          f"(majority baseline {base:.4f}); best bundle in {cfg.workdir}/best, final in "
          f"{cfg.workdir}/bundle, dev predictions in {cfg.workdir}/predictions")


def run(args) -> None:
  run_and_report(config_from_args("classify", args, regression=args.regression))


def register(tasks) -> None:
  p = tasks.add_parser("classify", help="sentence / sentence-pair classification or regression")
  add_common_arguments(p, "TSV with a header: sentence (or sentence1, sentence2) and label")
  p.add_argument("--regression", action="store_true", help="float labels (MSE; Pearson/Spearman)")
  p.set_defaults(func=run)
