"""The `flaxbert` subcommands, one module per family; each module has `register(subparsers)`."""

import importlib

# Order is the order of `flaxbert --help`.
MODULES = ("pretrain", "finetune", "distill", "predict", "evaluate", "export", "convert", "embed",
           "fill_mask", "serve", "tokenizer", "wordvec", "report")


def register_all(subparsers, argv=()) -> None:
  """Registers the command `argv` names, alone, or every command when it names none
  (`flaxbert --help`, a typo): building pretrain's and finetune's flags imports their run
  configs and with them the training machinery, which `flaxbert embed` never uses."""
  named = next((arg for arg in argv if not arg.startswith("-")), None)
  for name in (named,) if named in MODULES else MODULES:
    module = importlib.import_module(f"flaxbert.commands.{name}")
    if getattr(module, "FLAGS_FROM_ARGV", False):   # its flags depend on one of them
      module.register(subparsers, argv)
    else:
      module.register(subparsers)
