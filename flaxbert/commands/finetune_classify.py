"""`flaxbert finetune classify`: sentence or sentence-pair classification / regression.

Also what the other fine-tuning tasks share: their flags come from FinetuneConfig, each task
leaving out the settings it does not read."""

from __future__ import annotations

from flaxbert.commands.flags import add_config_arguments, config_from_args
from flaxbert.recipes.configs import QA_SETTINGS, FinetuneConfig


def add_task_arguments(p, task: str) -> None:
  exclude = ["task"]
  if task != "classify":
    exclude.append("regression")
  if task != "qa":
    exclude.extend(QA_SETTINGS)
  add_config_arguments(p, FinetuneConfig, exclude=exclude)
  p.set_defaults(func=run, task=task)


def make_config(args) -> FinetuneConfig:
  return config_from_args(FinetuneConfig, args, task=args.task)


def run(args) -> None:
  import jax
  from flaxbert.recipes.finetune import finetune
  cfg = make_config(args)
  results = finetune(cfg)
  if jax.process_index() == 0:
    best, metric = results["best"], results["metric"]
    base = results["majority_baseline"][metric]
    stopped = f" (stopped early at step {results['steps']})" if results["stopped_early"] else ""
    print(f"fine-tuning done{stopped}: best dev {metric} {best['score']:.4f} at step "
          f"{best['step']} (majority baseline {base:.4f}); best bundle in {cfg.workdir}/best, "
          f"final in {cfg.workdir}/bundle, dev predictions in {cfg.workdir}/predictions")


def register(tasks) -> None:
  p = tasks.add_parser("classify", help="sentence / sentence-pair classification or regression")
  add_task_arguments(p, "classify")
