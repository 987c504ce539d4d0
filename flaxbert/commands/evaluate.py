"""`flaxbert evaluate --task T --predictions FILE [--gold FILE] [--null-odds FILE]`: scores as
JSON on stdout."""

from __future__ import annotations

import json


def run_evaluate(args) -> None:
  from flaxbert.tasks.predict import score_file
  print(json.dumps(score_file(args.task, args.predictions, args.gold, args.null_odds),
                   indent=1))


def register(sub) -> None:
  from flaxbert.tasks import NAMES
  p = sub.add_parser("evaluate", help="score a predictions file against gold")
  p.add_argument("--task", required=True, choices=NAMES)
  p.add_argument("--predictions", required=True, help="the output of `flaxbert predict`")
  p.add_argument("--gold", help="gold file (classify/regression/ner: default the label / tag "
                 "column of the predictions file; qa: the SQuAD JSON, required; seq2seq: the "
                 "source<TAB>target TSV (or one reference per line), required: sacrebleu "
                 "corpus BLEU and chrF)")
  p.add_argument("--null-odds", help="qa, SQuAD v2.0: the null_odds.json `predict` wrote "
                 "beside the predictions; adds best_exact, best_f1 and their thresholds, "
                 "as the official evaluate-v2.0.py")
  p.set_defaults(func=run_evaluate)
