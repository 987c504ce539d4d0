"""The pure pretraining step: MLM + NSP losses, gradient accumulation, one optimizer update.

Losses are normalised by the *global* batch's totals (masked-token weight for MLM, example
count for NSP) computed before the microbatch loop, so accumulating k microbatches gives the
same loss and gradient as one step on the k-times batch. Losses and softmax run in float32.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from flaxbert import sharding as mesh_lib
from flaxbert.training.state import TrainState

MODEL_INPUTS = ("input_ids", "segment_ids", "input_mask", "masked_positions")
PACKED_INPUTS = ("position_ids", "nsp_positions")   # packed rows only (data/packing.py)
SUM_KEYS = ("mlm_loss", "mlm_hits", "mlm_weight", "nsp_loss", "nsp_hits", "nsp_weight")


def model_inputs(batch):
  return {k: batch[k] for k in MODEL_INPUTS + PACKED_INPUTS if k in batch}


def nsp_weights(batch):
  """Per-NSP-prediction weight: packed rows' filled slots, or each example's weight."""
  if "nsp_weights" in batch:
    return batch["nsp_weights"].astype(jnp.float32)
  return batch.get("example_weight", jnp.ones(batch["nsp_label"].shape, jnp.float32)
                   ).astype(jnp.float32)


def cross_entropy_sums(logits, labels, weights):
  """(sum of weighted NLL, sum of weighted correct) in float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(correct * weights)


def pretraining_sums(outputs, batch):
  """Per-batch sums of MLM and NSP losses and hits, and their weights."""
  mlm_w = batch["masked_weights"].astype(jnp.float32)
  nsp_w = nsp_weights(batch)
  mlm_loss, mlm_hits = cross_entropy_sums(outputs["mlm_logits"], batch["masked_ids"], mlm_w)
  nsp_loss, nsp_hits = cross_entropy_sums(outputs["nsp_logits"], batch["nsp_label"], nsp_w)
  return {"mlm_loss": mlm_loss, "mlm_hits": mlm_hits, "mlm_weight": jnp.sum(mlm_w),
          "nsp_loss": nsp_loss, "nsp_hits": nsp_hits, "nsp_weight": jnp.sum(nsp_w)}


def summarise(sums):
  mlm_w = jnp.maximum(sums["mlm_weight"], 1.0)
  nsp_w = jnp.maximum(sums["nsp_weight"], 1.0)
  mlm_loss, nsp_loss = sums["mlm_loss"] / mlm_w, sums["nsp_loss"] / nsp_w
  return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss,
          "mlm_accuracy": sums["mlm_hits"] / mlm_w, "nsp_loss": nsp_loss,
          "nsp_accuracy": sums["nsp_hits"] / nsp_w}


def _split_microbatches(batch, k: int):
  """[B, ...] -> [k, B/k, ...] taking rows i, i+k, ...: each device keeps its own rows."""
  def split(x):
    return x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    learning_rate: Callable, accum_steps: int = 1):
  """train_step(state, batch) -> (state, metrics): pure, for jit with donated state."""

  def train_step(state: TrainState, batch):
    with nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
      step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
      mlm_total = jnp.maximum(jnp.sum(batch["masked_weights"].astype(jnp.float32)), 1.0)
      nsp_total = jnp.maximum(jnp.sum(nsp_weights(batch)), 1.0)

      def loss_fn(params, micro, key):
        outputs = model.apply({"params": params}, **model_inputs(micro),
                              deterministic=False, rngs={"dropout": key})
        sums = pretraining_sums(outputs, micro)
        return sums["mlm_loss"] / mlm_total + sums["nsp_loss"] / nsp_total, sums

      grad_fn = jax.grad(loss_fn, has_aux=True)
      if accum_steps == 1:
        grads, sums = grad_fn(state.params, batch, step_key)
      else:
        def body(carry, xs):
          i, micro = xs
          g, s = grad_fn(state.params, micro, jax.random.fold_in(step_key, i))
          return jax.tree.map(jnp.add, carry, (g, s)), None
        zeros = (jax.tree.map(jnp.zeros_like, state.params),
                 {k: jnp.zeros((), jnp.float32) for k in SUM_KEYS})
        (grads, sums), _ = jax.lax.scan(
            body, zeros, (jnp.arange(accum_steps), _split_microbatches(batch, accum_steps)))
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      metrics = summarise(sums)
      metrics["grad_norm"] = optax.global_norm(grads)
      metrics["learning_rate"] = learning_rate(state.step)
      new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
      return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module):
  """eval_step(params, batch) -> metric sums (summed over batches, then `summarise`d)."""

  def eval_step(params, batch):
    with nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
      outputs = model.apply({"params": params}, **model_inputs(batch), deterministic=True)
      return pretraining_sums(outputs, batch)

  return eval_step
