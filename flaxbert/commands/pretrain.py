"""`flaxbert pretrain` (also `python -m pretrain`): the PretrainConfig flags, plus how to start
the processes of a multi-host run and compiling for a TPU topology ahead of time."""

from __future__ import annotations

import argparse

from flaxbert.commands.flags import add_config_arguments, config_from_args
from flaxbert.errors import FlaxbertError
from flaxbert.recipes.configs import PretrainConfig


def _init_distributed(args) -> None:
  from flaxbert import multihost
  # TPU pods and SLURM/Open MPI clusters are detected with --distributed.
  multihost.initialize(args.coordinator, args.num_processes, args.process_id,
                       detect=args.distributed)


def make_config(args) -> PretrainConfig:
  return config_from_args(PretrainConfig, args)


def run_pretrain(args) -> None:
  cfg = make_config(args)
  if cfg.init is not None and args.architecture == "encdec":
    raise FlaxbertError("--init continues BERT pretraining; it cannot be used with --model "
                        "encdec")
  if args.aot_topology:
    from flaxbert.recipes.pretrain_aot import compile_for_topology
    report = compile_for_topology(cfg, args.aot_topology, chip_config=args.aot_chip_config,
                                  num_slices=args.aot_slices)
    import json
    print(json.dumps(report, indent=2))
    return
  _init_distributed(args)
  if args.architecture == "encdec":
    from flaxbert.recipes.encdec_pretrain import pretrain_encdec
    last = pretrain_encdec(cfg)
  else:
    from flaxbert.recipes.bert_pretrain import pretrain
    last = pretrain(cfg)
  import jax
  if jax.process_index() == 0:
    shown = ", ".join(f"{k} {last[k]:.4g}" for k in ("loss", "mlm_loss", "mlm_accuracy",
                                                       "token_accuracy", "eval_loss")
                      if k in last)
    print(f"pretraining done: {shown}; bundle in {args.workdir}/bundle")
    example = last.get("fill_mask")
    if example:
      print(shown_fill_mask(example))


def shown_fill_mask(example: dict) -> str:
  """The line that shows a run's held-out fill-mask example (bert_pretrain.held_out_fill_mask)."""
  # SentencePiece marks a word start with U+2581; shown as the word.
  shown = ", ".join(f"{token.lstrip(chr(0x2581)) or token} {p:.2f}"
                    for token, p in example["predictions"])
  return (f"fill-mask on held-out text: {example['text']!r} (masked: {example['answer']!r})"
          f" -> {shown}")


def add_pretrain_arguments(p: argparse.ArgumentParser) -> None:
  # Not a PretrainConfig field: it picks the recipe (and its dest must not be `model`, the
  # field behind --config).
  p.add_argument("--model", dest="architecture", default="bert", choices=("bert", "encdec"),
                 help="bert: MLM + NSP; encdec: encoder-decoder with T5 span corruption over "
                 "chunks of --max-length tokens (--config tiny or transformer_base) "
                 "(default: %(default)s)")
  add_config_arguments(p, PretrainConfig)
  dist = p.add_argument_group("multi-host")
  dist.add_argument("--distributed", action="store_true",
                    help="jax.distributed.initialize() with cluster auto-detection (TPU pods)")
  dist.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
  dist.add_argument("--num-processes", type=int, metavar="N")
  dist.add_argument("--process-id", type=int, metavar="I")
  aot = p.add_argument_group("compile for a TPU topology without TPUs (needs jax[tpu])")
  aot.add_argument("--aot-topology", metavar="NAME", help="e.g. v5p:4x4x8")
  aot.add_argument("--aot-chip-config", default="megacore", help="(default: %(default)s)")
  aot.add_argument("--aot-slices", type=int, default=1, help="(default: %(default)s)")


def register(sub) -> None:
  p = sub.add_parser("pretrain", help="pretrain BERT (MLM + NSP), sharded, resumable")
  add_pretrain_arguments(p)
  p.set_defaults(func=run_pretrain)
