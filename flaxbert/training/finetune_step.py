"""Pure fine-tuning steps: classification, regression, tagging and span QA.

Losses run in float32 and are normalised by the batch's weight (example_weight: 0 on the
rows that pad an incomplete batch; tagging also ignores labels -1). The dropout key of a step
is derived from the stored key and the step, so a resumed run repeats nothing.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from flaxbert import sharding as mesh_lib
from flaxbert.training.state import TrainState

MODEL_INPUTS = ("input_ids", "segment_ids", "input_mask")
TASKS = ("classification", "regression", "tagging", "span_qa")


def _nll(logits, labels):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  safe = jnp.maximum(labels, 0).astype(jnp.int32)
  return -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]


def loss_sums(task: str, outputs: dict, batch: dict) -> dict:
  """(sum of weighted loss, sum of weights, sum of weighted hits) for a batch."""
  weight = batch.get("example_weight")
  if task in ("classification", "regression"):
    logits = outputs["logits"].astype(jnp.float32)
    w = jnp.ones(logits.shape[:1], jnp.float32) if weight is None else weight.astype(
        jnp.float32)
    if task == "regression":
      err = logits[:, 0] - batch["label"].astype(jnp.float32)
      return {"loss": jnp.sum(w * err * err), "weight": jnp.sum(w), "hits": jnp.zeros(())}
    label = batch["label"].astype(jnp.int32)
    hits = (jnp.argmax(logits, -1) == label).astype(jnp.float32)
    return {"loss": jnp.sum(w * _nll(logits, label)), "weight": jnp.sum(w),
            "hits": jnp.sum(w * hits)}
  if task == "tagging":
    logits = outputs["logits"].astype(jnp.float32)
    labels = batch["labels"]
    w = (labels >= 0).astype(jnp.float32)
    if weight is not None:
      w = w * weight.astype(jnp.float32)[:, None]
    hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss": jnp.sum(w * _nll(logits, labels)), "weight": jnp.sum(w),
            "hits": jnp.sum(w * hits)}
  if task == "span_qa":
    start = outputs["start_logits"].astype(jnp.float32)
    end = outputs["end_logits"].astype(jnp.float32)
    w = jnp.ones(start.shape[:1], jnp.float32) if weight is None else weight.astype(
        jnp.float32)
    nll = 0.5 * (_nll(start, batch["start_position"]) + _nll(end, batch["end_position"]))
    hits = ((jnp.argmax(start, -1) == batch["start_position"])
            & (jnp.argmax(end, -1) == batch["end_position"])).astype(jnp.float32)
    return {"loss": jnp.sum(w * nll), "weight": jnp.sum(w), "hits": jnp.sum(w * hits)}
  raise ValueError(f"unknown fine-tuning task {task!r}")


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, task: str,
                    learning_rate):
  """train_step(state, batch) -> (state, metrics): pure, for jit with donated state."""

  def train_step(state: TrainState, batch):
    with nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
      key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

      def loss_fn(params):
        outputs = model.apply({"params": params}, **{k: batch[k] for k in MODEL_INPUTS},
                              deterministic=False, rngs={"dropout": key})
        sums = loss_sums(task, outputs, batch)
        return sums["loss"] / jnp.maximum(sums["weight"], 1.0), sums

      grads, sums = jax.grad(loss_fn, has_aux=True)(state.params)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      weight = jnp.maximum(sums["weight"], 1.0)
      metrics = {"loss": sums["loss"] / weight, "grad_norm": optax.global_norm(grads),
                 "learning_rate": learning_rate(state.step)}
      if task != "regression":
        metrics["train_accuracy"] = sums["hits"] / weight
      return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_predict_step(model: nn.Module):
  """predict_step(params, batch) -> the model's float32 outputs (deterministic)."""

  def predict_step(params, batch):
    with nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
      return model.apply({"params": params}, **{k: batch[k] for k in MODEL_INPUTS},
                         deterministic=True)

  return predict_step
