"""One generic pure train step with the loss plugged in (as nanodo's get_loss_fn).

An `Objective` says how a model turns a batch into loss *sums* (training/losses.py), which
global totals normalise them, and which metrics the sums give. The step computes the totals on
the whole batch before its microbatch loop, so accumulating k microbatches gives the same loss
and gradient as one step on the k-times batch, for every recipe alike. The dropout key of a
step is derived from the stored key and the step, so a resumed run repeats nothing.

Frozen inputs: `train_step(state, batch, *frozen)` passes any further arguments to
`objective.sums` after the key, untouched and never differentiated: a distillation teacher's
parameters (training/loop.py places them on the mesh once; the step does not donate them).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from flaxbert import sharding
from flaxbert.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class Objective:
  # (params, batch, dropout key or None for deterministic, *frozen) -> dict of float32 sums
  sums: Callable
  # batch -> dict of global normalisers, computed on the whole (global) batch
  totals: Callable
  # (sums, totals) -> the scalar loss to differentiate
  loss: Callable
  # sums (added over microbatches or evaluation batches) -> metrics
  summarise: Callable


def _split_microbatches(batch, k: int):
  """[B, ...] -> [k, B/k, ...] taking rows i, i+k, ...: each device keeps its own rows."""
  def split(x):
    return x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def make_train_step(objective: Objective, tx: optax.GradientTransformation,
                    learning_rate: Callable, accum_steps: int = 1):
  """train_step(state, batch, *frozen) -> (state, metrics): pure, for jit with donated
  state (and frozen inputs not donated)."""

  def train_step(state: TrainState, batch, *frozen):
    with nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
      step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
      totals = objective.totals(batch)

      def loss_fn(params, micro, key):
        sums = objective.sums(params, micro, key, *frozen)
        return objective.loss(sums, totals), sums

      grad_fn = jax.grad(loss_fn, has_aux=True)
      if accum_steps == 1:
        grads, sums = grad_fn(state.params, batch, step_key)
      else:
        micro = _split_microbatches(batch, accum_steps)
        sums_shape = jax.eval_shape(lambda: objective.sums(
            state.params, jax.tree.map(lambda x: x[0], micro), step_key, *frozen))

        def body(carry, xs):
          i, one = xs
          g, s = grad_fn(state.params, one, jax.random.fold_in(step_key, i))
          return jax.tree.map(jnp.add, carry, (g, s)), None
        zeros = (jax.tree.map(jnp.zeros_like, state.params),
                 jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), sums_shape))
        (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      metrics = objective.summarise(sums)
      metrics["grad_norm"] = optax.global_norm(grads)
      metrics["learning_rate"] = learning_rate(state.step)
      return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(objective: Objective):
  """eval_step(params, batch, *frozen) -> metric sums (add over batches, then
  `objective.summarise`); frozen inputs as in train_step."""

  def eval_step(params, batch, *frozen):
    with nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
      return objective.sums(params, batch, None, *frozen)

  return eval_step


def make_predict_step(model: nn.Module, inputs=("input_ids", "segment_ids", "input_mask")):
  """predict_step(params, batch) -> the model's outputs (deterministic)."""

  def predict_step(params, batch):
    with nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
      return model.apply({"params": params}, **{k: batch[k] for k in inputs},
                         deterministic=True)

  return predict_step
