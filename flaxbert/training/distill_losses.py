"""Intermediate (feature) distillation losses: TinyBERT's hidden states, MiniLM's last-layer
self-attention. Pure functions of one student and one teacher forward pass.

Each function is one paper loss (T teacher, S student, float32 throughout):

- `hidden_state_loss`: TinyBERT (Jiao et al. 2020, sec. 3.1, "hidden-states based
  distillation" and "embedding-layer distillation"): L_hidn = MSE(H^S W_h, H^T) and
  L_embd = MSE(E^S W_e, E^T), summed over a layer map g as L = sum_m L_layer(S_m, T_g(m))
  (all weights 1). Hidden-state index 0 is the embeddings' output, so the map's (0, 0) pair is
  L_embd. One projection W serves every pair (TinyBERT's code shares a single `fit_dense`);
  `HiddenProjection` is that W, and nothing at all when the widths are equal. The default map is
  TinyBERT's uniform one, g(m) = m * L_T / L_S (`uniform_layer_map`).
- `attention_distribution_loss`: MiniLM (Wang et al. 2020, sec. 3.1, "self-attention
  distribution transfer"): L_AT = 1/(A_h |x|) sum_a sum_t KL(A^T_{L,a,t} || A^S_{M,a,t}) with
  A = softmax(Q K^T / sqrt(d_k)) of the teacher's last layer L and the student's last layer M.
- `value_relation_loss`: MiniLM ("self-attention value-relation transfer"):
  VR = softmax(V V^T / sqrt(d_k)), L_VR = 1/(A_h |x|) sum_a sum_t KL(VR^T_{L,a,t} || VR^S_{M,a,t}).
- `minilm_loss`: MiniLM's total L_AT + L_VR, or any set of relations.

Head counts: MiniLM needs A_h equal in teacher and student. With `relation_heads=R`, each of
Q, K, V has its heads concatenated (back to the model width) and re-split into R relation heads
of width D / R before the relations are taken (MiniLMv2, Wang et al. 2021, sec. 3, "multi-head
self-attention relations"): then a 384-wide 12-head student learns from a 768-wide 12-head
teacher, or from any head count, as long as R divides both widths. MiniLMv2's own relation set
is `relations=("qq", "kk", "vv")`.

Masks: `mask_BxL` is the batch's input mask (1 = real token, 0 = padding, at any position);
for packed rows (`packed=True`) each token's example number within its row, as the model takes
it, and every relation stays within an example. Padding keys get zero probability in every
relation; padding queries and tokens are left out of every mean. Means run over all valid tokens of the batch (token-weighted), so
the losses do not depend on how much padding a batch has. Teacher inputs pass through
`stop_gradient`: no gradient ever reaches the teacher.

How the recipe calls them, in one jitted step (teacher and student are any flaxbert head
models; applied with "intermediates" mutable they sow what these losses need, see
flaxbert/models/bert.py):

  t_out, t_vars = teacher.apply({"params": t_params}, *batch, mutable=["intermediates"])
  s_out, s_vars = student.apply({"params": s_params}, *batch, deterministic=False,
                                rngs=rngs, mutable=["intermediates"])
  t_hidden, t_attention = sown_distill_outputs(t_vars["intermediates"])
  s_hidden, s_attention = sown_distill_outputs(s_vars["intermediates"])
  projection = HiddenProjection(teacher_width)   # its params train beside the student's
  loss_hidden = hidden_state_loss(
      s_hidden, t_hidden, input_mask, uniform_layer_map(s_layers, t_layers),
      project=lambda h: projection.apply({"params": projection_params}, h))
  loss_attention = minilm_loss(s_attention, t_attention, input_mask, relation_heads=None)

`nn.meta.unbox(HiddenProjection(teacher_width).init(key, s_hidden[0])["params"])` gives its
parameters (empty when the widths are equal); boxed, they carry logical axis names for the mesh.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxbert.errors import FlaxbertError
from flaxbert.models.attention import pair_mask
from flaxbert.models.bert import logical

# MiniLM's relations by name: (first, second) of the scaled dot product softmax(a b^T / sqrt(d)).
RELATION_INPUTS = {"qk": ("query", "key"), "vv": ("value", "value"),
                   "qq": ("query", "query"), "kk": ("key", "key")}
MINILM_RELATIONS = ("qk", "vv")      # L_AT + L_VR
MINILMV2_RELATIONS = ("qq", "kk", "vv")


class HiddenProjection(nn.Module):
  """TinyBERT's W: student width -> teacher width, x W + b. With equal widths it is the
  identity and has no parameters (the paper's W only exists to bridge widths)."""

  teacher_width: int
  init_std: float = 0.02      # BERT's initializer range, as TinyBERT's fit_dense

  @nn.compact
  def __call__(self, x_BxLxD):
    width = x_BxLxD.shape[-1]
    if width == self.teacher_width:
      return x_BxLxD
    kernel = self.param("kernel", logical(nn.initializers.normal(self.init_std),
                                          ("embed", "mlp")),
                        (width, self.teacher_width), jnp.float32)
    bias = self.param("bias", logical(nn.initializers.zeros, ("mlp",)),
                      (self.teacher_width,), jnp.float32)
    return x_BxLxD.astype(jnp.float32) @ kernel + bias


def uniform_layer_map(student_layers: int, teacher_layers: int) -> tuple[tuple[int, int], ...]:
  """TinyBERT's uniform map over hidden-state indices (0 = embeddings): student i -> teacher
  i * L_T // L_S, for i = 0 .. L_S, so embeddings meet embeddings and last meets last."""
  if student_layers < 1 or teacher_layers < 1:
    raise FlaxbertError(f"layer map: need at least one layer each (student {student_layers}, "
                        f"teacher {teacher_layers})")
  return tuple((i, i * teacher_layers // student_layers) for i in range(student_layers + 1))


def hidden_state_loss(student_KxBxLxD, teacher_JxBxLxE, mask_BxL,
                      layer_map: Sequence[tuple[int, int]],
                      project: Callable | None = None):
  """TinyBERT's L_embd + L_hidn: for each (student index, teacher index) pair of hidden states
  (K = student layers + 1, J = teacher layers + 1), the mean over valid tokens and teacher
  features of (project(student) - teacher)^2; summed over pairs."""
  if not layer_map:
    raise FlaxbertError("layer map: no (student, teacher) layer pairs")
  students, teachers = len(student_KxBxLxD), len(teacher_JxBxLxE)
  for s, t in layer_map:
    if not (0 <= s < students and 0 <= t < teachers):
      raise FlaxbertError(f"layer map: pair ({s}, {t}) is outside the student's {students} "
                          f"and the teacher's {teachers} hidden states")
  project = project or (lambda h: h)
  teacher_JxBxLxE = jax.lax.stop_gradient(teacher_JxBxLxE)
  valid_BxL = mask_BxL > 0     # also right for packed rows' example numbers
  count = jnp.maximum(jnp.sum(valid_BxL), 1) * teacher_JxBxLxE.shape[-1]
  total = 0.0
  for s, t in layer_map:
    projected_BxLxE = project(student_KxBxLxD[s]).astype(jnp.float32)
    if projected_BxLxE.shape != teacher_JxBxLxE.shape[1:]:
      raise FlaxbertError(f"hidden-state loss: student states of shape {projected_BxLxE.shape} "
                          f"after projection do not match the teacher's "
                          f"{teacher_JxBxLxE.shape[1:]} (widths differ: give a projection)")
    error_BxLxE = (projected_BxLxE - teacher_JxBxLxE[t].astype(jnp.float32)) ** 2
    total = total + jnp.sum(jnp.where(valid_BxL[..., None], error_BxLxE, 0.0)) / count
  return total


def relation_heads_of(x_BxLxNxH, relation_heads: int | None):
  """MiniLMv2's regrouping: the N heads concatenated to width D, re-split into R heads of
  D / R. None keeps the model's own heads."""
  if relation_heads is None:
    return x_BxLxNxH
  b, length, n, h = x_BxLxNxH.shape
  if relation_heads < 1 or (n * h) % relation_heads:
    raise FlaxbertError(f"relation heads: {relation_heads} does not divide the attention "
                        f"width {n * h}")
  return x_BxLxNxH.reshape(b, length, relation_heads, n * h // relation_heads)


def key_mask(mask_BxL, packed: bool):
  """Which keys each query may see, B x 1 x L x T (broadcast over heads): the real tokens, or
  for packed rows those of the query's own example."""
  if packed:
    return pair_mask(mask_BxL)[:, None]
  return mask_BxL.astype(bool)[:, None, None, :]


def relation_log_probs(a_BxLxNxH, b_BxLxNxH, mask_BxL, relation_heads: int | None = None,
                       packed: bool = False):
  """log softmax(a b^T / sqrt(d)) per (relation) head over valid keys: B x N x L x L."""
  a_BxLxNxH = relation_heads_of(a_BxLxNxH.astype(jnp.float32), relation_heads)
  b_BxLxNxH = relation_heads_of(b_BxLxNxH.astype(jnp.float32), relation_heads)
  logits_BxNxLxT = jnp.einsum("blnh,btnh->bnlt", a_BxLxNxH, b_BxLxNxH) / jnp.sqrt(
      a_BxLxNxH.shape[-1])
  # The smallest float, not -inf: a masked key's probability is exactly 0 and no inf - inf.
  logits_BxNxLxT = jnp.where(key_mask(mask_BxL, packed), logits_BxNxLxT,
                             jnp.finfo(jnp.float32).min)
  return jax.nn.log_softmax(logits_BxNxLxT, axis=-1)


def relation_kl(student_a, student_b, teacher_a, teacher_b, mask_BxL,
                relation_heads: int | None = None, packed: bool = False):
  """1/(N |x|) sum_heads sum_valid_queries KL(R^T || R^S), R = softmax(a b^T / sqrt(d)); all
  inputs B x L x N x H (the teacher's own N and H may differ from the student's only with
  relation_heads)."""
  teacher_a, teacher_b = jax.lax.stop_gradient((teacher_a, teacher_b))
  if relation_heads is None and teacher_a.shape[2] != student_a.shape[2]:
    raise FlaxbertError(f"MiniLM: the teacher has {teacher_a.shape[2]} attention heads and the "
                        f"student {student_a.shape[2]}; give relation_heads (a number that "
                        "divides both widths) to compare regrouped relation heads")
  teacher_BxNxLxT = relation_log_probs(teacher_a, teacher_b, mask_BxL, relation_heads, packed)
  student_BxNxLxT = relation_log_probs(student_a, student_b, mask_BxL, relation_heads, packed)
  terms = jnp.exp(teacher_BxNxLxT) * (teacher_BxNxLxT - student_BxNxLxT)
  kl_BxNxL = jnp.sum(jnp.where(key_mask(mask_BxL, packed), terms, 0.0), axis=-1)
  queries_Bx1xL = (mask_BxL > 0).astype(jnp.float32)[:, None, :]
  heads = teacher_BxNxLxT.shape[1]
  return jnp.sum(kl_BxNxL * queries_Bx1xL) / (heads * jnp.maximum(jnp.sum(queries_Bx1xL), 1))


def attention_distribution_loss(student_attention, teacher_attention, mask_BxL,
                                relation_heads: int | None = None, packed: bool = False):
  """MiniLM's L_AT; the attention dicts are `sown_distill_outputs`' {"query", "key", ...}."""
  return minilm_loss(student_attention, teacher_attention, mask_BxL, ("qk",), relation_heads,
                     packed)


def value_relation_loss(student_attention, teacher_attention, mask_BxL,
                        relation_heads: int | None = None, packed: bool = False):
  """MiniLM's L_VR."""
  return minilm_loss(student_attention, teacher_attention, mask_BxL, ("vv",), relation_heads,
                     packed)


def minilm_loss(student_attention, teacher_attention, mask_BxL,
                relations: Sequence[str] = MINILM_RELATIONS, relation_heads: int | None = None,
                packed: bool = False):
  """The sum of the named relations' KLs: MiniLM's L_AT + L_VR by default, MiniLMv2's
  Q-Q + K-K + V-V with `relations=MINILMV2_RELATIONS`."""
  unknown = [r for r in relations if r not in RELATION_INPUTS]
  if unknown or not relations:
    raise FlaxbertError(f"MiniLM: unknown relation(s) {unknown or list(relations)}; use "
                        f"{', '.join(RELATION_INPUTS)}")
  total = 0.0
  for relation in relations:
    first, second = RELATION_INPUTS[relation]
    total = total + relation_kl(student_attention[first], student_attention[second],
                                teacher_attention[first], teacher_attention[second],
                                mask_BxL, relation_heads, packed)
  return total
