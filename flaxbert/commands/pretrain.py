"""`flaxbert pretrain` (also `python -m pretrain`)."""

from __future__ import annotations

import argparse

from flaxbert.errors import FlaxbertError


def parse_overrides(pairs: list[str]) -> tuple:
  """--set key=value pairs; values parsed as JSON where they are (numbers, true/false)."""
  import json
  out = []
  for pair in pairs:
    key, eq, value = pair.partition("=")
    if not eq or not key:
      raise FlaxbertError(f"--set {pair!r}: expected key=value")
    try:
      parsed = json.loads(value)
    except json.JSONDecodeError:
      parsed = value
    out.append((key.strip(), parsed))
  return tuple(out)


def _init_distributed(args) -> None:
  from flaxbert import multihost
  # TPU pods and SLURM/Open MPI clusters are detected with --distributed.
  multihost.initialize(args.coordinator, args.num_processes, args.process_id,
                       detect=args.distributed)


def _pretrain_config(args):
  from flaxbert.recipes.bert_pretrain import PretrainConfig
  return PretrainConfig(
      workdir=args.workdir, model=args.config, overrides=parse_overrides(args.set),
      corpus=tuple(args.corpus or ()), eval_corpus=tuple(args.eval_corpus or ()),
      tokenizer=args.tokenizer, vocab_size=args.vocab_size, lowercase=args.lowercase,
      data_dir=args.data_dir, steps=args.steps, batch_size=args.batch_size,
      seq_len=args.seq_len, max_predictions=args.max_predictions, whole_word=args.whole_word,
      pack=args.pack, accum_steps=args.accum_steps, mesh=args.mesh, optimizer=args.optimizer,
      learning_rate=args.lr, warmup_steps=args.warmup_steps, schedule=args.schedule,
      weight_decay=args.weight_decay, clip_norm=args.clip_norm, seed=args.seed,
      log_every=args.log_every, eval_every=args.eval_every, eval_batches=args.eval_batches,
      checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
      async_checkpoints=not args.sync_checkpoints, progress=not args.quiet)


def run_pretrain(args) -> None:
  cfg = _pretrain_config(args)
  if args.aot_topology:
    from flaxbert.recipes.pretrain_aot import compile_for_topology
    report = compile_for_topology(cfg, args.aot_topology, chip_config=args.aot_chip_config,
                                  num_slices=args.aot_slices)
    import json
    print(json.dumps(report, indent=2))
    return
  _init_distributed(args)
  if args.model == "encdec":
    from flaxbert.recipes.encdec_pretrain import pretrain_encdec
    last = pretrain_encdec(cfg)
  else:
    from flaxbert.recipes.bert_pretrain import pretrain
    last = pretrain(cfg)
  import jax
  if jax.process_index() == 0:
    shown = ", ".join(f"{k} {last[k]:.4g}" for k in ("loss", "mlm_loss", "mlm_accuracy",
                                                       "token_accuracy", "eval_loss")
                      if k in last)
    print(f"pretraining done: {shown}; bundle in {args.workdir}/bundle")


def add_pretrain_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics, bundle")
  p.add_argument("--model", default="bert", choices=("bert", "encdec"),
                 help="bert: MLM + NSP; encdec: encoder-decoder with T5 span corruption over "
                 "chunks of --seq-len tokens (--config tiny or transformer_base)")
  p.add_argument("--config", default="tiny", help="tiny, bert_12_768_12, bert_24_1024_16, or "
                 "an HF config.json (default tiny)")
  p.add_argument("--corpus", nargs="+", metavar="FILE", help="BERT-format text: one sentence "
                 "per line, a blank line between documents (default: the embedded corpus)")
  p.add_argument("--eval-corpus", nargs="+", metavar="FILE",
                 help="held-out text (default: every 50th document of the corpus)")
  p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: train one)")
  p.add_argument("--vocab-size", type=int, default=8000, help="for a trained tokenizer")
  p.add_argument("--lowercase", action="store_true", help="for a trained tokenizer")
  p.add_argument("--data-dir", help="cache of prepared datasets (default WORKDIR/data/prepared)")
  p.add_argument("--steps", type=int, help="optimizer updates (default 300 for tiny, 1M otherwise)")
  p.add_argument("--batch-size", type=int, default=32, help="global batch size")
  p.add_argument("--seq-len", type=int, default=128)
  p.add_argument("--max-predictions", type=int, help="masked positions per sequence "
                 "(default ceil(0.15 * seq-len))")
  p.add_argument("--whole-word", action="store_true", help="whole-word masking")
  p.add_argument("--pack", action="store_true", help="pack several sentence pairs into each "
                 "sequence (attention stays within a pair): no compute spent on padding")
  p.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation microbatches")
  p.add_argument("--mesh", help="data=D,fsdp=F,tensor=T (default: all devices on data)")
  p.add_argument("--optimizer", default="adamw", choices=("adamw", "lamb"))
  p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3 tiny, 1e-4 others)")
  p.add_argument("--warmup-steps", type=int, help="default 10%% of --steps")
  p.add_argument("--schedule", default="linear", choices=("linear", "cosine"))
  p.add_argument("--weight-decay", type=float, default=0.01)
  p.add_argument("--clip-norm", type=float, default=1.0, help="global-norm clipping (0: off)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--log-every", type=int, default=10)
  p.add_argument("--eval-every", type=int, default=100)
  p.add_argument("--eval-batches", type=int, default=4)
  p.add_argument("--checkpoint-every", type=int, default=100)
  p.add_argument("--keep-checkpoints", type=int, default=3)
  p.add_argument("--sync-checkpoints", action="store_true", help="save synchronously")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="model config field, e.g. --set dtype=bfloat16 --set remat=true")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  dist = p.add_argument_group("multi-host")
  dist.add_argument("--distributed", action="store_true",
                    help="jax.distributed.initialize() with cluster auto-detection (TPU pods)")
  dist.add_argument("--coordinator", help="HOST:PORT of process 0")
  dist.add_argument("--num-processes", type=int)
  dist.add_argument("--process-id", type=int)
  aot = p.add_argument_group("compile for a TPU topology without TPUs (needs jax[tpu])")
  aot.add_argument("--aot-topology", metavar="NAME", help="e.g. v5p:4x4x8")
  aot.add_argument("--aot-chip-config", default="megacore")
  aot.add_argument("--aot-slices", type=int, default=1)


def register(sub) -> None:
  p = sub.add_parser("pretrain", help="pretrain BERT (MLM + NSP), sharded, resumable")
  add_pretrain_arguments(p)
  p.set_defaults(func=run_pretrain)
