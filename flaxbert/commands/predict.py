"""`flaxbert predict BUNDLE --task TASK --input FILE --output FILE`: one function per task."""

from __future__ import annotations


def predict_seq2seq(args) -> None:
  from flaxbert.tasks.seq2seq import predict_file
  count = predict_file(args.bundle, args.input, args.output, beam=args.beam, alpha=args.alpha,
                       max_source_length=args.max_source_length,
                       max_length=args.max_length, batch_size=args.batch_size)
  print(f"{count} translations written to {args.output}")


TASKS = {"seq2seq": predict_seq2seq}


def run(args) -> None:
  TASKS[args.task](args)


def register(sub) -> None:
  p = sub.add_parser("predict", help="run a bundle over an input file")
  p.add_argument("bundle", metavar="BUNDLE")
  p.add_argument("--task", required=True, choices=tuple(TASKS))
  p.add_argument("--input", required=True, metavar="FILE",
                 help="seq2seq: one source per line (TSV: first column)")
  p.add_argument("--output", required=True, metavar="FILE")
  p.add_argument("--batch-size", type=int, default=64)
  s2s = p.add_argument_group("seq2seq")
  s2s.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
  s2s.add_argument("--alpha", type=float, default=0.6, help="length penalty exponent")
  s2s.add_argument("--max-source-length", type=int, default=64)
  s2s.add_argument("--max-length", type=int, default=64, help="generated tokens at most")
  p.set_defaults(func=run)
