"""`flaxbert finetune qa`: extractive QA on SQuAD v1.1 / v2.0 JSON."""

from __future__ import annotations

from flaxbert.commands.finetune_classify import add_task_arguments


def register(tasks) -> None:
  p = tasks.add_parser("qa", help="extractive question answering (SQuAD v1.1 / v2.0)")
  add_task_arguments(p, "qa")
