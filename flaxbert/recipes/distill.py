"""Recipe: knowledge distillation of a fine-tuned bundle (the teacher) into a smaller student,
on the teacher's task and files.

What it declares, the mechanism being the fine-tune's (recipes/finetune.py `train_task`):
- the teacher: a classify (or regression), NER or QA bundle, loaded once; its parameters go
  onto the mesh, sharded as a trained model's would be, and enter every step as a frozen
  input (not trained, not in the optimizer state, not donated, not checkpointed);
- the transfer set: the training file, and `--unlabeled` files whose examples have no label
  (classify -1, regression NaN, ner tags -1 with every word's first sub-token a KD position,
  qa start/end -1): they add to the KD term only;
- `--cache-teacher` (training/teacher_cache.py): the teacher's outputs computed once per
  example and joined to the batches; the step then runs the student alone;
- the student (bundle/student.py): N evenly spaced layers of the teacher, a preset or
  config, or a bundle; `--set` changes how it computes, as in fine-tuning;
- the loss (training/objectives.py `distillation`): alpha * T^2 * KL(teacher_T ||
  student_T) + (1 - alpha) * the head's cross-entropy, in one jitted step whose teacher
  forward pass is deterministic and under stop_gradient;
- feature terms (`--hidden-weight`, `--attention-weight`; training/distill_features.py,
  objectives `feature_distillation`): + TinyBERT's hidden-state MSE over a layer map and
  MiniLM's last-layer attention and value relations. Both models then sow their hidden states
  and attention inputs (otherwise neither does: the step is the plain one). A projection from
  the student's width to the teacher's trains beside the student when the hidden-state term
  needs one; checkpoints hold it, best/ and bundle/ do not.

Everything else is a fine-tune's: dev scores through `flaxbert predict`'s code, the best
student in WORKDIR/best/ (a bundle like any other), the last in WORKDIR/bundle/, exact
resume, metrics.jsonl, TensorBoard, early stopping, results.json (with the teacher, the
student's layers and the loss settings added).
"""

from __future__ import annotations

import dataclasses
import os

from flaxbert import bundle as bundle_lib
from flaxbert.bundle import student as student_lib
from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json
from flaxbert.models.factory import dummy_inputs
from flaxbert.recipes import finetune as finetune_lib
from flaxbert.recipes.configs import DistillConfig
from flaxbert.recipes.distill_feature_settings import check_kd_settings, feature_settings
from flaxbert.training import distill_features, objectives, teacher_cache
from flaxbert.training.run import Run, open_run
from flaxbert.training.state import place_params

# A teacher's head -> the task distilled (`flaxbert finetune` names).
TASK_OF_HEAD = {"classification": "classify", "regression": "classify", "tagging": "ner",
                "span_qa": "qa"}


def teacher_task(path: str) -> tuple[str, bool]:
  """(task, regression) of the fine-tuned bundle at `path`, from its config.json alone."""
  config = os.path.join(path, "config.json")
  if not os.path.isfile(config):
    raise FlaxbertError(f"--teacher {path}: no such bundle (no config.json)")
  head = read_json(config).get("head")
  if head not in TASK_OF_HEAD:
    raise FlaxbertError(f"--teacher {path}: a {head!r} bundle; the teacher must be fine-tuned "
                        "for classify, ner or qa (`flaxbert finetune`)")
  return TASK_OF_HEAD[head], head == "regression"


def _check(cfg: DistillConfig, mesh) -> None:
  finetune_lib.check_settings(cfg, mesh)
  check_kd_settings(cfg)
  check_cache_teacher(cfg)


# The DistillConfig fields of losses on the teacher's layers (hidden states, attention).
FEATURE_LOSS_WEIGHTS = ("hidden_weight", "attention_weight")


def check_cache_teacher(cfg: DistillConfig) -> None:
  """--cache-teacher stores the head's outputs only: losses on the teacher's layers need
  them at every step."""
  if not cfg.cache_teacher:
    return
  for name in FEATURE_LOSS_WEIGHTS:
    if getattr(cfg, name, 0):
      flag = "--" + name.replace("_", "-")
      raise FlaxbertError(f"--cache-teacher stores the teacher's outputs, not its layers: "
                          f"{flag} needs the teacher at every step; drop one of the two")


def distill(cfg: DistillConfig) -> dict:
  """Runs (or resumes) a distillation; returns results.json's content."""
  with open_run(cfg, f"distill-{cfg.task}", _check) as run:
    return _distill(run)


def _distill(run: Run) -> dict:
  cfg = run.cfg
  teacher = bundle_lib.load(cfg.init)
  if teacher.head != cfg.head:
    raise FlaxbertError(f"--teacher {cfg.init}: a {teacher.head} bundle, not {cfg.head}")
  student = finetune_lib.with_overrides(
      student_lib.build_student(teacher, cfg.student, cfg.student_layers, cfg.seed),
      cfg.overrides)

  def student_for(labels):
    """The student, its labels the teacher's (the ids its head and the data share)."""
    unknown = sorted(set(labels or ()) - set(teacher.labels or ()))
    if unknown:
      raise FlaxbertError(f"{cfg.train}: labels the teacher does not know: "
                          f"{', '.join(unknown)} (the teacher's: {', '.join(teacher.labels)})")
    return dataclasses.replace(student, task_settings=None)

  def frozen():
    return (place_params(teacher.model, teacher.params, run.mesh, dummy_inputs()),)

  features = feature_settings(cfg, teacher, student)

  def cached(data):
    return teacher_cache.teacher_outputs(
        teacher, data, run.mesh, run.path("data", "teacher_outputs"), cfg.eval_batch_size,
        show_progress=run.is_main and cfg.progress)

  def with_projection(bundle):
    """The student and, for the hidden-state term, the projection to the teacher's width."""
    trained, params = distill_features.student_with_projection(
        bundle.model, bundle.params, features, teacher.config.hidden_size, cfg.seed)
    return finetune_lib.Trainee(trained, params, distill_features.STUDENT)

  if cfg.cache_teacher:
    steps = dict(objective=lambda model: objectives.distillation_from_batch(
        model, cfg.head, cfg.temperature, cfg.alpha), joined=cached)
  elif features.enabled:
    steps = dict(objective=lambda model: objectives.feature_distillation(
        model, teacher.model, cfg.head, cfg.temperature, cfg.alpha, features),
        frozen=frozen, trainee=with_projection)
  else:
    steps = dict(objective=lambda model: objectives.distillation(
        model, teacher.model, cfg.head, cfg.temperature, cfg.alpha), frozen=frozen)
  return finetune_lib.train_task(
      run, student_for, tokenizer_from=cfg.init, **steps, known_labels=teacher.labels,
      more_train_keys=("kd_token_mask",) if cfg.unlabeled and cfg.head == "tagging" else (),
      unlabeled=tuple(os.path.abspath(path) for path in cfg.unlabeled),
      more_results={"teacher": os.path.abspath(cfg.init),
                    "teacher_layers": teacher.config.num_layers,
                    "student": cfg.student, "student_layers": student.config.num_layers,
                    "temperature": cfg.temperature, "alpha": cfg.alpha,
                    "unlabeled_files": list(cfg.unlabeled),
                    "cache_teacher": cfg.cache_teacher,
                    **({"hidden_weight": cfg.hidden_weight, "layer_map": features.layer_map,
                        "attention_weight": cfg.attention_weight,
                        "relation_heads": cfg.relation_heads} if features.enabled else {})})
