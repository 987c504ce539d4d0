"""`flaxbert distill --teacher BUNDLE --train FILE --dev FILE --workdir DIR [--student ...]`:
a smaller student trained on a fine-tuned teacher's outputs (recipes/distill.py), with the
fine-tuning flags; the task is the teacher's.

`flaxbert distill --objective mlm --teacher BUNDLE --corpus FILE... --workdir DIR`: general
distillation of a pretrained teacher's MLM on a corpus (recipes/distill_mlm.py), with the
pretraining flags. The objective picks the flag set, so the parser is built for the
`--objective` the command line gives (FLAGS_FROM_ARGV)."""

from __future__ import annotations

from flaxbert.commands.flags import add_config_arguments, config_from_args
from flaxbert.recipes.configs import DistillConfig, DistillMLMConfig

FLAGS_FROM_ARGV = True
OBJECTIVES = ("task", "mlm")
# PretrainConfig fields a general distillation takes from its teacher instead.
MLM_FIXED = ("init", "model", "tokenizer", "vocab_size", "lowercase")


def objective_of(argv) -> str:
  """The value of --objective in `argv` (task when absent)."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg == "--objective" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith("--objective="):
      return arg.partition("=")[2]
  return "task"


def make_config(args) -> DistillConfig:
  from flaxbert.recipes.distill import teacher_task
  task, regression = teacher_task(args.teacher)
  return config_from_args(DistillConfig, args, task=task, regression=regression,
                          init=args.teacher)


def make_mlm_config(args) -> DistillMLMConfig:
  return config_from_args(DistillMLMConfig, args, init=args.teacher)


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


def run_mlm(args) -> None:
  import jax
  from flaxbert.recipes.distill_mlm import distill_mlm
  cfg = make_mlm_config(args)
  last = distill_mlm(cfg)
  if jax.process_index() == 0:
    shown = ", ".join(f"{k} {last[k]:.4g}" for k in (
        "eval_kd_loss", "eval_mlm_loss", "eval_mlm_accuracy", "eval_teacher_mlm_accuracy",
        "eval_hidden_loss", "eval_attention_loss")
        if k in last)
    print(f"general distillation done: {last['student_layers']}-layer student of a "
          f"{last['teacher_layers']}-layer teacher, held-out {shown}; bundle in "
          f"{cfg.workdir}/bundle")
    example = last.get("fill_mask")
    if example:
      from flaxbert.commands.pretrain import shown_fill_mask
      print(shown_fill_mask(example))


def register(sub, argv=()) -> None:
  objective = objective_of(argv)
  p = sub.add_parser("distill", help="distil a fine-tuned classify, ner or qa bundle, or a "
                     "pretrained one's MLM (--objective mlm), into a smaller student")
  p.add_argument("--objective", choices=OBJECTIVES, default="task",
                 help="task: the teacher's fine-tuned head on its task's files (--train, "
                 "--dev); mlm: a pretrained teacher's masked-language model on --corpus text "
                 "(`flaxbert distill --objective mlm --help` lists its flags) "
                 "(default: %(default)s)")
  if objective == "mlm":
    p.add_argument("--teacher", required=True, metavar="BUNDLE",
                   help="the pretrained bundle or HF BertForPreTraining / BertForMaskedLM "
                   "checkpoint whose MLM predictions the student learns (its tokenizer reads "
                   "the corpus)")
    add_config_arguments(p, DistillMLMConfig, exclude=MLM_FIXED, required=("corpus",))
    p.set_defaults(func=run_mlm)
    return
  p.add_argument("--teacher", required=True, metavar="BUNDLE",
                 help="the fine-tuned bundle whose outputs the student learns")
  add_config_arguments(p, DistillConfig, exclude=("task", "init", "regression"))
  p.set_defaults(func=run)
