"""`flaxbert finetune ner`: BIO tagging of CoNLL `token<TAB>tag` files."""

from __future__ import annotations

from flaxbert.commands.finetune_classify import add_common_arguments, config_from_args, \
    run_and_report


def run(args) -> None:
  run_and_report(config_from_args("ner", args))


def register(tasks) -> None:
  p = tasks.add_parser("ner", help="named-entity tagging (CoNLL BIO; seqeval entity F1)")
  add_common_arguments(p, "CoNLL file: token<TAB>tag per line, blank line between sentences")
  p.set_defaults(func=run)
