"""`flaxbert predict BUNDLE --task T --input FILE --output FILE`."""

from __future__ import annotations


def run_predict(args) -> None:
  from flaxbert.tasks.predict import predict_file
  n = predict_file(args.bundle, args.task, args.input, args.output,
                   batch_size=args.batch_size, mesh_spec=args.mesh,
                   show_progress=not args.quiet, max_seq_length=args.max_length)
  print(f"wrote {args.output}: {n} predictions")


def register(sub) -> None:
  from flaxbert.tasks.predict import PREDICTORS
  p = sub.add_parser("predict", help="run a fine-tuned bundle over a file")
  p.add_argument("bundle", help="fine-tuned bundle (e.g. WORKDIR/best)")
  p.add_argument("--task", required=True, choices=tuple(PREDICTORS))
  p.add_argument("--input", required=True, help="classify: TSV; ner: CoNLL (tags optional); "
                 "qa: SQuAD JSON (answers optional)")
  p.add_argument("--output", required=True, help="classify: the TSV with a prediction column; "
                 "ner: CoNLL with a predicted tag column; qa: JSON id -> answer")
  p.add_argument("--max-length", type=int, help="default: the fine-tune's")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--mesh", help="data=D,... (default: all devices on data)")
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(func=run_predict)
