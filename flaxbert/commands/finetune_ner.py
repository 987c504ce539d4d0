"""`flaxbert finetune ner`: BIO tagging of CoNLL `token<TAB>tag` files."""

from __future__ import annotations

from flaxbert.commands.finetune_classify import add_task_arguments


def register(tasks) -> None:
  p = tasks.add_parser("ner", help="named-entity tagging (CoNLL BIO; seqeval entity F1)")
  add_task_arguments(p, "ner")
