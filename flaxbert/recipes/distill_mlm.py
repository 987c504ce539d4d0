"""Recipe: general (pretraining-stage) distillation, `flaxbert distill --objective mlm`: a
student learns a pretrained teacher's masked-language-model distribution on a corpus.

What it declares, the mechanism being pretraining's (recipes/bert_pretrain.py):
- the text: pretraining's own path (`prepare_text`, `batches`): the corpus files, held-out
  documents (every 50th, or --eval-corpus), masking as pretraining masks (--max-predictions,
  --whole-word, --pack); the tokenizer is the teacher's (copied into WORKDIR/tokenizer);
- the teacher: a bundle with an MLM head (`flaxbert pretrain`'s, or an HF BertForPreTraining
  / BertForMaskedLM directory), loaded once; its parameters go onto the mesh sharded as a
  trained model's would be and enter every step as a frozen input (not trained, donated or
  checkpointed);
- the student (bundle/student.py `build_mlm_student`): N evenly spaced layers of the teacher,
  a preset or config, or a bundle, with the teacher's embeddings and MLM head where shapes
  allow; `--set` changes how it computes;
- the loss (training/objectives.py `mlm_distillation`): alpha * T^2 * KL(teacher_T ||
  student_T) + (1 - alpha) * MLM cross-entropy on the true tokens, at the masked positions;
- feature terms (`--hidden-weight`, `--attention-weight`, `--relation-heads`, `--layer-map`,
  as in task distillation; objectives `mlm_feature_distillation`): + TinyBERT's hidden-state
  MSE and MiniLM's last-layer attention and value relations over every real token of the
  rows. The loop then trains the student beside the projection to the teacher's width (when
  the hidden-state term needs one); checkpoints hold both, the bundle the student alone.

The run skeleton and loop do the rest: identity, lock, exact resume, metrics.jsonl,
TensorBoard, progress, SIGTERM. Every evaluation scores the same held-out batches (the
student's MLM loss and accuracy, the KD loss, the teacher's accuracy beside them); the student
is saved as a pretraining bundle in WORKDIR/bundle, which fill-mask, embed and
`finetune --init` take like any other.
"""

from __future__ import annotations

import os

import jax

from flaxbert import bundle as bundle_lib
from flaxbert.bundle import student as student_lib
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json
from flaxbert.recipes import bert_pretrain
from flaxbert.recipes import finetune as finetune_lib
from flaxbert.recipes.configs import DistillMLMConfig
from flaxbert.recipes.distill_feature_settings import check_kd_settings, feature_settings
from flaxbert.training import distill_features, objectives, optim
from flaxbert.training.run import Run, open_run
from flaxbert.training.state import place_params
from flaxbert.training.step import make_eval_step, make_train_step

KIND = "distill-mlm"


def check_teacher(path: str) -> None:
  """A teacher with an MLM head, from its config.json alone (before anything is written)."""
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise FlaxbertError(f"--teacher {path}: no such bundle or checkpoint (no config.json)")
  if student_lib.has_mlm_head(path) is False:
    meta = read_json(os.path.join(path, "config.json"))
    what = meta.get("head") or ", ".join(meta.get("architectures") or ()) or "headless"
    raise FlaxbertError(f"--teacher {path}: a {what} model without an MLM head; --objective "
                        "mlm distils a pretrained one (`flaxbert pretrain`'s bundle, or an HF "
                        "BertForPreTraining / BertForMaskedLM checkpoint)")


def check(cfg: DistillMLMConfig, mesh) -> None:
  if not cfg.corpus:
    raise FlaxbertError("--objective mlm needs --corpus FILE...: the text the student learns "
                        "the teacher's predictions on")
  check_teacher(cfg.init)
  bert_pretrain.check(cfg, mesh)   # batch, length and --set against the teacher's config
  check_kd_settings(cfg)


def distill_mlm(cfg: DistillMLMConfig) -> dict:
  """Runs (or resumes) a general distillation; returns the last logged metrics."""
  with open_run(cfg, KIND, check) as run:
    return _distill_mlm(run)


def trained_tree(cfg: DistillMLMConfig, student, teacher, features):
  """(the model the loop trains, its initial parameters, the key of the student's parameters
  in them or None): with feature terms, the student beside the projection to the teacher's
  width (distill_features.StudentWithProjection), else the student alone."""
  if not features.enabled:
    return student.model, student.params, None
  trained, params = distill_features.student_with_projection(
      student.model, student.params, features, teacher.config.hidden_size, cfg.seed)
  return trained, params, distill_features.STUDENT


def objective(cfg: DistillMLMConfig, trained, teacher, features):
  """The step's objective: the MLM mimicry, with the feature terms when enabled."""
  if not features.enabled:
    return objectives.mlm_distillation(trained, teacher.model, cfg.temperature, cfg.alpha)
  return objectives.mlm_feature_distillation(trained, teacher.model, cfg.temperature,
                                             cfg.alpha, features, packed=cfg.pack)


def _distill_mlm(run: Run) -> dict:
  cfg = run.cfg
  train_files, eval_files, tokenizer_dir = bert_pretrain.prepare_text(run)
  teacher = bundle_lib.load(cfg.init)
  if teacher.head != "pretraining":   # check_teacher read its config; the weights decide
    raise FlaxbertError(f"--teacher {cfg.init}: loads as a {teacher.head} model, without an "
                        "MLM head")
  student = finetune_lib.with_overrides(
      student_lib.build_mlm_student(teacher, cfg.student, cfg.student_layers, cfg.seed),
      cfg.overrides)
  if cfg.seq_len > student.config.max_position_embeddings:
    raise FlaxbertError(f"--max-length {cfg.seq_len} exceeds the student's "
                        f"{student.config.max_position_embeddings} positions")
  features = feature_settings(cfg, teacher, student)
  run.record(model="bert", head="pretraining", model_config=student.config.to_dict(),
             teacher=os.path.abspath(cfg.init), teacher_layers=teacher.config.num_layers)
  trained, initial_params, bundle_key = trained_tree(cfg, student, teacher, features)
  if bundle_key is not None:   # for `flaxbert export WORKDIR` (training/run.py)
    run.record(bundle_params_key=bundle_key)
  teacher_params = place_params(teacher.model, teacher.params, run.mesh,
                                bert_pretrain.dummy_pretraining_inputs())
  opt_cfg = cfg.optimizer_config()
  tx = optim.make_optimizer(opt_cfg)
  step_objective = objective(cfg, trained, teacher, features)
  eval_step = jax.jit(make_eval_step(step_objective))
  train_data = run.prepare(lambda: bert_pretrain.batches(
      cfg, run.workdir, train_files, tokenizer_dir, cfg.seed), "train-data")
  held_out = run.prepare(lambda: bert_pretrain.batches(
      cfg, run.workdir, eval_files, tokenizer_dir, cfg.seed + 1), "eval-data")
  held_out_start = held_out.get_state()

  def evaluate(params, step):
    held_out.set_state(held_out_start)   # the same held-out batches at every evaluation
    return run.evaluate_sums(lambda p, batch: eval_step(p, batch, teacher_params), params,
                             (next(held_out) for _ in range(cfg.eval_batches)),
                             step_objective.summarise, "eval_")

  loop_cfg = run.loop_config(total_steps=cfg.total_steps, eval_every=cfg.eval_every,
                             checkpoint_every=cfg.checkpoint_every, desc="distill")
  result = run.train(
      loop_cfg, model=trained, tx=tx,
      dummy_inputs=bert_pretrain.dummy_pretraining_inputs(),
      train_step=make_train_step(step_objective, tx, optim.learning_rate_schedule(opt_cfg),
                                 cfg.accum_steps),
      data=train_data, evaluate=evaluate, count_tokens=bert_pretrain.real_tokens,
      initial_params=initial_params, frozen=(teacher_params,))
  params = result.state.params
  tokenizer = load_tokenizer(tokenizer_dir)
  run.save_bundle("bundle", bundle_lib.Bundle(
      student.model, params if bundle_key is None else params[bundle_key], tokenizer,
      student.config, "pretraining"))
  last = dict(result.last_metrics)
  last.update(student_layers=student.config.num_layers,
              teacher_layers=teacher.config.num_layers)
  if run.is_main:
    last["fill_mask"] = bert_pretrain.held_out_fill_mask(run.path("bundle"), eval_files)
  return last
