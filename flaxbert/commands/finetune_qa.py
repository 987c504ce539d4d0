"""`flaxbert finetune qa`: extractive QA on SQuAD v1.1 / v2.0 JSON."""

from __future__ import annotations

from flaxbert.commands.finetune_classify import add_common_arguments, config_from_args, \
    run_and_report


def run(args) -> None:
  version_2 = True if args.version_2 else (False if args.version_1 else None)
  run_and_report(config_from_args(
      "qa", args, doc_stride=args.doc_stride, max_query_length=args.max_query_length,
      max_answer_length=args.max_answer_length, n_best=args.n_best, version_2=version_2,
      null_threshold=args.null_threshold))


def register(tasks) -> None:
  p = tasks.add_parser("qa", help="extractive question answering (SQuAD v1.1 / v2.0)")
  add_common_arguments(p, "SQuAD JSON")
  p.add_argument("--doc-stride", type=int, default=128, help="tokens between window starts")
  p.add_argument("--max-query-length", type=int, default=64)
  p.add_argument("--max-answer-length", type=int, default=30, help="tokens")
  p.add_argument("--n-best", type=int, default=20, help="start/end candidates per window")
  v = p.add_mutually_exclusive_group()
  v.add_argument("--version-2", action="store_true",
                 help="allow no answer (default: detected from is_impossible / version)")
  v.add_argument("--version-1", action="store_true", help="always answer")
  p.add_argument("--null-threshold", type=float, default=0.0,
                 help="v2: answer \"\" when null score - best span score exceeds this")
  p.set_defaults(func=run)
