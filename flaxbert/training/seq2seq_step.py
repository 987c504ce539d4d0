"""Pure train and eval steps for the encoder-decoder: teacher forcing, label-smoothed
cross-entropy in float32, normalised by the global batch's count of target tokens.

Batches carry source_ids, source_mask, target_ids, target_mask (targets end in EOS) and
optionally example_weight; the decoder input is `shift_right(target_ids)`.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from flaxbert.models.encdec import shift_right
from flaxbert import sharding as mesh_lib
from flaxbert.training.state import TrainState


def token_weights(batch):
  weights = batch["target_mask"].astype(jnp.float32)
  if "example_weight" in batch:
    weights = weights * batch["example_weight"].astype(jnp.float32)[:, None]
  return weights


def seq2seq_sums(logits_BxTxV, batch, label_smoothing: float = 0.0):
  """Sums of the smoothed loss, the plain NLL, correct tokens and weight (all float32).

  Smoothing spreads `label_smoothing` of the target mass uniformly over the vocabulary:
  loss = (1 - e) * NLL + e * mean over v of -log p(v).
  """
  weights_BxT = token_weights(batch)
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  nll_BxT = -jnp.take_along_axis(logp_BxTxV, batch["target_ids"][..., None].astype(jnp.int32),
                                 axis=-1)[..., 0]
  loss_BxT = nll_BxT
  if label_smoothing > 0.0:
    loss_BxT = (1.0 - label_smoothing) * nll_BxT - label_smoothing * jnp.mean(logp_BxTxV,
                                                                              axis=-1)
  correct_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == batch["target_ids"]).astype(jnp.float32)
  return {"loss": jnp.sum(loss_BxT * weights_BxT), "nll": jnp.sum(nll_BxT * weights_BxT),
          "hits": jnp.sum(correct_BxT * weights_BxT), "weight": jnp.sum(weights_BxT)}


def summarise(sums):
  weight = jnp.maximum(sums["weight"], 1.0)
  return {"loss": sums["loss"] / weight, "nll": sums["nll"] / weight,
          "token_accuracy": sums["hits"] / weight}


def _forward(model, params, batch, deterministic, rngs=None):
  decoder_input = shift_right(batch["target_ids"], model.config.decoder_start_id)
  return model.apply({"params": params}, batch["source_ids"], batch["source_mask"],
                     decoder_input, deterministic=deterministic, rngs=rngs)["logits"]


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    learning_rate: Callable, label_smoothing: float = 0.1):
  """train_step(state, batch) -> (state, metrics): pure, for jit with donated state."""

  def train_step(state: TrainState, batch):
    with nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
      step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
      total = jnp.maximum(jnp.sum(token_weights(batch)), 1.0)

      def loss_fn(params):
        logits = _forward(model, params, batch, False, {"dropout": step_key})
        sums = seq2seq_sums(logits, batch, label_smoothing)
        return sums["loss"] / total, sums

      grads, sums = jax.grad(loss_fn, has_aux=True)(state.params)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      metrics = summarise(sums)
      metrics["grad_norm"] = optax.global_norm(grads)
      metrics["learning_rate"] = learning_rate(state.step)
      return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model: nn.Module, label_smoothing: float = 0.1):
  """eval_step(params, batch) -> metric sums (add over batches, then `summarise`)."""

  def eval_step(params, batch):
    with nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
      return seq2seq_sums(_forward(model, params, batch, True), batch, label_smoothing)

  return eval_step
