"""`flaxbert finetune seq2seq --train T.tsv --dev D.tsv [--init BUNDLE]`."""

from __future__ import annotations

from flaxbert.commands.flags import add_config_arguments, config_from_args
from flaxbert.recipes.configs import Seq2SeqConfig


def make_config(args) -> Seq2SeqConfig:
  return config_from_args(Seq2SeqConfig, args)


def run(args) -> None:
  from flaxbert.recipes.seq2seq import finetune_seq2seq
  cfg = make_config(args)
  last = finetune_seq2seq(cfg)
  shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.startswith("dev_bleu")
                    or k.startswith("dev_chrf") or k == "loss")
  print(f"seq2seq fine-tuning done: {shown}; bundle in {cfg.workdir}/bundle, best dev "
        f"bundle in {cfg.workdir}/best, predictions in {cfg.workdir}/predictions")


def register(tasks) -> None:
  p = tasks.add_parser("seq2seq", help="encoder-decoder on source<TAB>target pairs "
                       "(BLEU/chrF on dev, greedy and beam)")
  add_config_arguments(p, Seq2SeqConfig)
  p.set_defaults(func=run)
