"""The objectives of the recipes: a model's forward pass wired to a loss of training/losses.py.

`None` as the key means deterministic (evaluation): no dropout.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxbert.models.encdec import shift_right
from flaxbert.training import distill_features, losses
from flaxbert.training.step import Objective

BERT_INPUTS = ("input_ids", "segment_ids", "input_mask")
PRETRAINING_INPUTS = BERT_INPUTS + ("masked_positions",)
PACKED_INPUTS = ("position_ids", "nsp_positions")   # packed rows only (data/packing.py)


def _apply(model: nn.Module, params, key, *args, **inputs):
  """The model's forward pass: deterministic without a key, with dropout from it."""
  if key is None:
    return model.apply({"params": params}, *args, **inputs, deterministic=True)
  return model.apply({"params": params}, *args, **inputs, deterministic=False,
                     rngs={"dropout": key})


def pretraining_inputs(batch):
  return {k: batch[k] for k in PRETRAINING_INPUTS + PACKED_INPUTS if k in batch}


def pretraining(model: nn.Module) -> Objective:
  """BERT's MLM + NSP, each normalised by the global batch's totals."""
  return Objective(
      sums=lambda params, batch, key: losses.pretraining_sums(
          _apply(model, params, key, **pretraining_inputs(batch)), batch),
      totals=losses.pretraining_totals, loss=losses.pretraining_loss,
      summarise=losses.summarise_pretraining)


def finetuning(model: nn.Module, head: str) -> Objective:
  """A fine-tuning head's loss (cross-entropy, MSE, token or span), weighted per example."""
  return Objective(
      sums=lambda params, batch, key: losses.head_sums(
          head, _apply(model, params, key, **{k: batch[k] for k in BERT_INPUTS}), batch),
      totals=lambda batch: {"weight": jnp.maximum(jnp.sum(losses.head_weights(head, batch)), 1.0)},
      loss=lambda sums, totals: sums["loss"] / totals["weight"],
      summarise=losses.summarise_head(head))


def distillation(student: nn.Module, teacher: nn.Module, head: str, temperature: float,
                 alpha: float) -> Objective:
  """Knowledge distillation (losses.distill_sums): the teacher's parameters are the step's
  frozen input (make_train_step), its forward pass deterministic and without gradients; its
  outputs exist only inside the step, on the devices."""

  def sums(params, batch, key, teacher_params):
    inputs = {k: batch[k] for k in BERT_INPUTS}
    taught = jax.lax.stop_gradient(_apply(teacher, teacher_params, None, **inputs))
    return losses.distill_sums(head, _apply(student, params, key, **inputs), taught, batch,
                               temperature)

  return Objective(sums=sums, totals=lambda batch: losses.distill_totals(head, batch),
                   loss=losses.distill_loss(alpha),
                   summarise=losses.summarise_distill(head, alpha))


def mlm_distillation(student: nn.Module, teacher: nn.Module, temperature: float,
                     alpha: float) -> Objective:
  """General distillation (losses.mlm_distill_sums): two pretraining models on the same
  masked rows, the teacher's parameters the step's frozen input as in `distillation`; with
  the feature terms, `mlm_feature_distillation`."""

  def sums(params, batch, key, teacher_params):
    inputs = pretraining_inputs(batch)
    taught = jax.lax.stop_gradient(_apply(teacher, teacher_params, None, **inputs))
    return losses.mlm_distill_sums(_apply(student, params, key, **inputs), taught, batch,
                                   temperature)

  return Objective(sums=sums, totals=losses.mlm_distill_totals,
                   loss=losses.mlm_distill_loss(alpha),
                   summarise=losses.summarise_mlm_distill(alpha))


TEACHER_PREFIX = "teacher_"   # batch fields of the teacher's stored outputs


def distillation_from_batch(student: nn.Module, head: str, temperature: float,
                            alpha: float) -> Objective:
  """`distillation` with the teacher's outputs read from the batch (`teacher_logits`, or
  `teacher_start_logits` and `teacher_end_logits`: training/teacher_cache.py computed them
  once per example): the step runs the student alone and takes no frozen inputs."""

  def sums(params, batch, key):
    inputs = {k: batch[k] for k in BERT_INPUTS}
    taught = {k[len(TEACHER_PREFIX):]: v for k, v in batch.items()
              if k.startswith(TEACHER_PREFIX)}
    return losses.distill_sums(head, _apply(student, params, key, **inputs), taught, batch,
                               temperature)

  return Objective(sums=sums, totals=lambda batch: losses.distill_totals(head, batch),
                   loss=losses.distill_loss(alpha),
                   summarise=losses.summarise_distill(head, alpha))


def _with_feature_terms(trained: distill_features.StudentWithProjection, teacher: nn.Module,
                        features: distill_features.FeatureSettings, inputs_of: Callable,
                        output_sums: Callable, output_totals: Callable, output_loss: Callable,
                        output_summary: Callable, packed: bool = False) -> Objective:
  """A distillation objective of the models' outputs (`output_sums(student outputs, teacher
  outputs, batch)` and its totals, loss and summary) plus the feature terms
  (training/distill_features.py) over every real token: the trained tree is the student with
  TinyBERT's projection, params {"student", "projection"}; both models sow their hidden
  states and last-layer attention inputs (packed rows: relations within each example)."""

  def mask(batch):
    return distill_features.token_mask(batch["input_mask"], batch)

  def sums(params, batch, key, teacher_params):
    inputs = inputs_of(batch)
    taught, teacher_sown = jax.lax.stop_gradient(
        distill_features.apply_sown(teacher, teacher_params, None, **inputs))
    outputs, student_sown = distill_features.apply_sown(
        trained.student, params[distill_features.STUDENT], key, **inputs)
    return {**output_sums(outputs, taught, batch),
            **distill_features.feature_sums(student_sown, teacher_sown, mask(batch), features,
                                            distill_features.projector(trained, params),
                                            packed)}

  def summarise(sums):
    metrics = output_summary(sums)
    feature_metrics, feature_loss = distill_features.summarise_features(features, sums)
    return {**metrics, **feature_metrics, "loss": metrics["loss"] + feature_loss}

  return Objective(
      sums=sums,
      totals=lambda batch: {**output_totals(batch),
                            **distill_features.feature_totals(mask(batch))},
      loss=lambda sums, totals: (output_loss(sums, totals)
                                 + distill_features.feature_loss(features, sums, totals)),
      summarise=summarise)


def feature_distillation(trained: distill_features.StudentWithProjection, teacher: nn.Module,
                         head: str, temperature: float, alpha: float,
                         features: distill_features.FeatureSettings) -> Objective:
  """`distillation` plus the feature terms (`_with_feature_terms`)."""
  return _with_feature_terms(
      trained, teacher, features, lambda batch: {k: batch[k] for k in BERT_INPUTS},
      lambda outputs, taught, batch: losses.distill_sums(head, outputs, taught, batch,
                                                         temperature),
      lambda batch: losses.distill_totals(head, batch), losses.distill_loss(alpha),
      losses.summarise_distill(head, alpha))


def mlm_feature_distillation(trained: distill_features.StudentWithProjection,
                             teacher: nn.Module, temperature: float, alpha: float,
                             features: distill_features.FeatureSettings,
                             packed: bool = False) -> Objective:
  """`mlm_distillation` plus the feature terms (`_with_feature_terms`) over every real token
  of the corpus rows, not only the masked ones."""
  return _with_feature_terms(
      trained, teacher, features, pretraining_inputs,
      lambda outputs, taught, batch: losses.mlm_distill_sums(outputs, taught, batch,
                                                             temperature),
      losses.mlm_distill_totals, losses.mlm_distill_loss(alpha),
      losses.summarise_mlm_distill(alpha), packed)


def seq2seq(model: nn.Module, label_smoothing: float = 0.0) -> Objective:
  """Teacher-forced, label-smoothed cross-entropy over the global batch's target tokens."""

  def sums(params, batch, key):
    decoder_input = shift_right(batch["target_ids"], model.config.decoder_start_id)
    logits = _apply(model, params, key, batch["source_ids"], batch["source_mask"],
                    decoder_input)["logits"]
    return losses.seq2seq_sums(logits, batch, label_smoothing)

  return Objective(
      sums=sums,
      totals=lambda batch: {"weight": jnp.maximum(jnp.sum(losses.token_weights(batch)), 1.0)},
      loss=lambda sums, totals: sums["loss"] / totals["weight"],
      summarise=losses.summarise_seq2seq)
