"""`flaxbert predict BUNDLE --task T --input FILE --output FILE`: every task of the registry."""

from __future__ import annotations


def run_predict(args) -> None:
  from flaxbert.tasks.predict import predict_file
  n = predict_file(args.bundle, args.task, args.input, args.output,
                   batch_size=args.batch_size, mesh_spec=args.mesh, show_progress=not args.quiet,
                   max_seq_length=args.max_length, beam=args.beam, alpha=args.alpha,
                   max_output_length=args.max_output_length, null_threshold=args.null_threshold)
  print(f"wrote {args.output}: {n} predictions")


def register(sub) -> None:
  from flaxbert.tasks import NAMES
  p = sub.add_parser("predict", help="run a fine-tuned bundle over a file")
  p.add_argument("bundle", help="fine-tuned bundle (e.g. WORKDIR/best)")
  p.add_argument("--task", required=True, choices=NAMES)
  p.add_argument("--input", required=True, help="classify/regression: TSV; ner: CoNLL (tags "
                 "optional); qa: SQuAD JSON (answers optional); seq2seq: the source<TAB>target "
                 "TSV fine-tuning reads (sources only are used; a header row is skipped) or "
                 "one source per line")
  p.add_argument("--output", required=True, help="classify: the TSV with a prediction column "
                 "and a prob_<label> column per label; ner: CoNLL with a predicted tag column, "
                 "and entity spans in OUTPUT.spans.jsonl; qa: JSON id -> answer, and "
                 "nbest_predictions.json (v2.0: also null_odds.json) in its directory; seq2seq: "
                 "one output per line")
  p.add_argument("--max-length", type=int, help="input tokens (default: the fine-tune's; "
                 "seq2seq: 128)")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--mesh", help="data=D,... (default: all devices on data)")
  p.add_argument("--quiet", action="store_true")
  qa = p.add_argument_group("qa")
  qa.add_argument("--null-threshold", type=float, help="answer \"\" when the null score minus "
                  "the best span score exceeds this (SQuAD v2.0; default: the fine-tune's; "
                  "`evaluate --null-odds` reports the best one)")
  s2s = p.add_argument_group("seq2seq")
  s2s.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
  s2s.add_argument("--alpha", type=float, default=0.6, help="length penalty exponent")
  s2s.add_argument("--max-output-length", type=int, default=64, help="generated tokens at most")
  p.set_defaults(func=run_predict)
