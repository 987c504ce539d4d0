"""Feature (intermediate) distillation terms as a composable piece of an objective: TinyBERT's
hidden-state MSE and MiniLM's last-layer self-attention relations (training/distill_losses.py),
weighted and normalised like every other loss of training/losses.py (sums, global totals).

    loss = the objective's own loss (KD/hard mix, or MLM mimicry)
           + hidden_weight * L_hidden + attention_weight * L_attention

An objective that has one student and one teacher forward pass, both applied through
`apply_sown` (which makes the models sow their hidden states and last-layer q/k/v), adds
`feature_sums` to its sums, `feature_totals` to its totals, `feature_loss` to its loss and
`summarise_features` to its metrics (hidden_loss, attention_loss).

Normalisation: each term is the mean over the real tokens of the whole (global) batch, as the
paper losses are means over tokens; the sums hold the term times the microbatch's token count,
so accumulated microbatches give the loss of one large batch.

The projection of TinyBERT (student width -> teacher width) trains with the student but is no
part of it: `StudentWithProjection` holds both as submodules, so the one sharded-init path and
the optimizer see params {"student": ..., "projection": ...} (no "projection" when no
projection is needed), checkpoints hold both, and the saved student is params["student"].
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.models.bert import sown_distill_outputs
from flaxbert.training import distill_losses

STUDENT, PROJECTION = "student", "projection"   # the trained tree's two parts


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
  """Which feature terms, and how. A weight of 0 leaves its term out of the computation."""
  hidden_weight: float = 0.0
  attention_weight: float = 0.0
  # (student hidden-state index, teacher index) pairs, 0 = embeddings
  layer_map: tuple[tuple[int, int], ...] = ()
  relation_heads: int | None = None
  relations: tuple[str, ...] = distill_losses.MINILM_RELATIONS

  @property
  def enabled(self) -> bool:
    return self.hidden_weight > 0 or self.attention_weight > 0


class StudentWithProjection(nn.Module):
  """The trained tree of a feature distillation: `student` (the bundle's model) and, with
  `project_to` set, TinyBERT's projection from the student's width to it. Called, it is the
  student (the projection's parameters are made at init, from a dummy hidden state)."""

  student: nn.Module
  project_to: int | None = None

  def setup(self):
    if self.project_to is not None:
      self.projection = distill_losses.HiddenProjection(self.project_to)

  def __call__(self, *args, **inputs):
    outputs = self.student(*args, **inputs)
    if self.project_to is not None and self.is_initializing():
      self.projection(jnp.zeros((1, 1, self.student.config.hidden_size), jnp.float32))
    return outputs

  def project(self, hidden_BxLxD):
    return self.projection(hidden_BxLxD) if self.project_to is not None else hidden_BxLxD


def initial_params(trained: StudentWithProjection, student_params, key):
  """The trained tree's parameters of a fresh run (host arrays): the student's as given, a
  fresh projection (none when the widths are equal)."""
  params = {STUDENT: student_params}
  if trained.project_to is not None:
    width = trained.student.config.hidden_size
    projection = distill_losses.HiddenProjection(trained.project_to).init(
        key, jnp.zeros((1, 1, width), jnp.float32))
    projection = nn.meta.unbox(projection.get("params", {}))
    if projection:
      params[PROJECTION] = jax.tree.map(np.asarray, projection)
  return params


def student_with_projection(student: nn.Module, student_params, settings: FeatureSettings,
                            teacher_width: int, seed: int):
  """(the trained tree, its initial parameters) of a feature distillation: the student and,
  for the hidden-state term, the projection to the teacher's width, freshly initialised from
  the run's seed (a key of its own, apart from the student's)."""
  trained = StudentWithProjection(student,
                                  teacher_width if settings.hidden_weight > 0 else None)
  return trained, initial_params(trained, student_params,
                                 jax.random.fold_in(jax.random.key(seed), 1))


def apply_sown(model: nn.Module, params, key, *args, **inputs):
  """(outputs, (hidden states, last-layer {"query", "key", "value"})) of one forward pass,
  deterministic without a key, with dropout from it."""
  rngs = {} if key is None else {"rngs": {"dropout": key}}
  outputs, variables = model.apply({"params": params}, *args, **inputs,
                                   deterministic=key is None, mutable=["intermediates"], **rngs)
  return outputs, sown_distill_outputs(variables["intermediates"])


def projector(wrapper: StudentWithProjection, params):
  """hidden states -> the teacher's width, with the trained tree's projection parameters."""
  return lambda hidden: wrapper.apply({"params": params}, hidden, method="project")


def token_mask(mask_BxL, batch):
  """The input mask without the rows that only fill an incomplete batch (example weight 0)."""
  weight = batch.get("example_weight")
  if weight is None:
    return mask_BxL
  return jnp.where(weight[:, None] > 0, mask_BxL, 0)


def feature_sums(student_sown, teacher_sown, mask_BxL, settings: FeatureSettings,
                 project=None, packed: bool = False) -> dict[str, Any]:
  """The weighted-sum form of the enabled terms, and the tokens they are means over.
  `*_sown` are `apply_sown`'s second results; `mask_BxL` the input mask (packed rows: each
  token's example number) with padding rows zeroed (`token_mask`); `project` maps student
  hidden states to the teacher's width (`projector`)."""
  teacher_hidden, teacher_attention = jax.lax.stop_gradient(teacher_sown)
  student_hidden, student_attention = student_sown
  tokens = jnp.sum(mask_BxL > 0).astype(jnp.float32)
  sums = {"feature_tokens": tokens}
  if settings.hidden_weight > 0:
    sums["hidden_loss"] = tokens * distill_losses.hidden_state_loss(
        student_hidden, teacher_hidden, mask_BxL, settings.layer_map, project)
  if settings.attention_weight > 0:
    sums["attention_loss"] = tokens * distill_losses.minilm_loss(
        student_attention, teacher_attention, mask_BxL, settings.relations,
        settings.relation_heads, packed)
  return sums


def feature_totals(mask_BxL) -> dict[str, Any]:
  """The global batch's real tokens (mask with padding rows zeroed, `token_mask`)."""
  return {"feature_tokens": jnp.maximum(jnp.sum(mask_BxL > 0).astype(jnp.float32), 1.0)}


def feature_loss(settings: FeatureSettings, sums, totals):
  """hidden_weight * L_hidden + attention_weight * L_attention over the global batch."""
  loss = 0.0
  if settings.hidden_weight > 0:
    loss = loss + settings.hidden_weight * sums["hidden_loss"] / totals["feature_tokens"]
  if settings.attention_weight > 0:
    loss = loss + settings.attention_weight * sums["attention_loss"] / totals["feature_tokens"]
  return loss


def summarise_features(settings: FeatureSettings, sums) -> tuple[dict[str, Any], Any]:
  """({hidden_loss, attention_loss}: the enabled terms' token means, their weighted sum)."""
  tokens = jnp.maximum(sums["feature_tokens"], 1.0)
  metrics = {name: sums[name] / tokens for name in ("hidden_loss", "attention_loss")
             if name in sums}
  return metrics, feature_loss(settings, sums, {"feature_tokens": tokens})
