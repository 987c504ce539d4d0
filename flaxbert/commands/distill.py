"""`flaxbert distill --teacher BUNDLE --train FILE --dev FILE --workdir DIR [--student ...]`:
a smaller student trained on a fine-tuned teacher's outputs (recipes/distill.py), with the
fine-tuning flags; the task is the teacher's."""

from __future__ import annotations

from flaxbert.commands.flags import add_config_arguments, config_from_args
from flaxbert.recipes.configs import DistillConfig


def make_config(args) -> DistillConfig:
  from flaxbert.recipes.distill import teacher_task
  task, regression = teacher_task(args.teacher)
  return config_from_args(DistillConfig, args, task=task, regression=regression,
                          init=args.teacher)


def run(args) -> None:
  import jax
  from flaxbert.recipes.distill import distill
  cfg = make_config(args)
  results = distill(cfg)
  if jax.process_index() == 0:
    best, metric = results["best"], results["metric"]
    stopped = f" (stopped early at step {results['steps']})" if results["stopped_early"] else ""
    print(f"distillation done{stopped}: {results['student_layers']}-layer student, best dev "
          f"{metric} {best['score']:.4f} at step {best['step']}; best student in "
          f"{cfg.workdir}/best, final in {cfg.workdir}/bundle")


def register(sub) -> None:
  p = sub.add_parser("distill", help="distil a fine-tuned classify, ner or qa bundle into a "
                     "smaller student")
  p.add_argument("--teacher", required=True, metavar="BUNDLE",
                 help="the fine-tuned bundle whose outputs the student learns")
  add_config_arguments(p, DistillConfig, exclude=("task", "init", "regression"))
  p.set_defaults(func=run)
