"""`flaxbert finetune TASK ...` (also `python -m finetune TASK ...`).

Each task lives in its own module `flaxbert/commands/finetune_<task>.py` with
`register(task_subparsers)`; TASKS lists them in `--help` order.
"""

from __future__ import annotations

import importlib

TASKS: tuple[str, ...] = ("classify", "ner", "qa", "seq2seq")


def register(sub) -> None:
  p = sub.add_parser("finetune", help="fine-tune a bundle or HF checkpoint on a task")
  tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
  for name in TASKS:
    importlib.import_module(f"flaxbert.commands.finetune_{name}").register(tasks)
