"""`flaxbert finetune seq2seq --train T.tsv --dev D.tsv [--init BUNDLE]`."""

from __future__ import annotations


def run(args) -> None:
  from flaxbert.commands.pretrain import parse_overrides
  from flaxbert.recipes.seq2seq import Seq2SeqConfig, finetune_seq2seq
  cfg = Seq2SeqConfig(
      workdir=args.workdir, train=args.train, dev=args.dev, init=args.init, model=args.config,
      overrides=parse_overrides(args.set), vocab_size=args.vocab_size,
      max_source_length=args.max_source_length, max_target_length=args.max_target_length,
      steps=args.steps, batch_size=args.batch_size,
      bucket_by_length=not args.no_length_buckets, mesh=args.mesh, learning_rate=args.lr,
      warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
      clip_norm=args.clip_norm, label_smoothing=args.label_smoothing, seed=args.seed,
      log_every=args.log_every, eval_every=args.eval_every, eval_examples=args.eval_examples,
      beam_size=args.beam, alpha=args.alpha, checkpoint_every=args.checkpoint_every,
      progress=not args.quiet)
  last = finetune_seq2seq(cfg)
  shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.startswith("dev_bleu")
                    or k.startswith("dev_chrf") or k == "loss")
  print(f"seq2seq fine-tuning done: {shown}; bundle in {args.workdir}/bundle, best dev "
        f"bundle in {args.workdir}/best, predictions in {args.workdir}/predictions")


def register(tasks) -> None:
  p = tasks.add_parser("seq2seq", help="encoder-decoder on source<TAB>target pairs "
                       "(BLEU/chrF on dev, greedy and beam)")
  p.add_argument("--train", required=True, metavar="TSV", help="source<TAB>target pairs")
  p.add_argument("--dev", required=True, metavar="TSV")
  p.add_argument("--workdir", required=True)
  p.add_argument("--init", metavar="BUNDLE", help="encoder-decoder bundle to start from "
                 "(its tokenizer and config are used)")
  p.add_argument("--config", default="tiny", help="tiny or transformer_base (default tiny)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="model config field, e.g. --set pre_ln=true")
  p.add_argument("--vocab-size", type=int, default=8000, help="BPE pieces over both sides")
  p.add_argument("--max-source-length", type=int, default=64)
  p.add_argument("--max-target-length", type=int, default=64)
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--no-length-buckets", action="store_true",
                 help="batch pairs in plain shuffled order, padded to the maximum lengths "
                 "(default: batches of similar lengths with padding cut to multiples of 8)")
  p.add_argument("--mesh", help="data=D,fsdp=F,tensor=T")
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--warmup-steps", type=int)
  p.add_argument("--weight-decay", type=float, default=0.0)
  p.add_argument("--clip-norm", type=float, default=1.0)
  p.add_argument("--label-smoothing", type=float, default=0.1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--log-every", type=int, default=10)
  p.add_argument("--eval-every", type=int, default=200)
  p.add_argument("--eval-examples", type=int, help="decode only the first N dev pairs")
  p.add_argument("--beam", type=int, default=4, help="beam size of the final evaluation")
  p.add_argument("--alpha", type=float, default=0.6, help="length penalty exponent")
  p.add_argument("--checkpoint-every", type=int, default=200)
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(func=run)
