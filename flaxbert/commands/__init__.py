"""The `flaxbert` subcommands, one module per family; each module has `register(subparsers)`."""

import importlib

# Order is the order of `flaxbert --help`.
MODULES = ("pretrain", "finetune", "predict", "evaluate", "export", "convert", "embed",
           "fill_mask", "tokenizer", "report")


def register_all(subparsers) -> None:
  for name in MODULES:
    importlib.import_module(f"flaxbert.commands.{name}").register(subparsers)
