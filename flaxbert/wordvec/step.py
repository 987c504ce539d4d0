"""The negative-sampling update, jitted once and run over a chunk of batches with lax.scan.

Per example: h = mean of the input-table rows of its input words (skip-gram: one word; CBOW:
the window's words; with subwords each word adds its n-gram buckets' rows too); the output
word is the positive and `negative` words from the unigram^0.75 table the negatives; with
g = lr * (label - sigmoid(h . v)), each output row gets g * h and each input row the whole
sum of g * v (undivided, as word2vec, gensim and fastText do). A batch's updates are summed
into the tables with one scatter-add each: only the rows touched are written.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _batch_update(tables, batch, *, word_rows, word_mask, negatives_table, negative: int,
                  key):
  w_in, w_out = tables
  inputs, outputs, lr, valid = batch                     # [B,k], [B], [], [B]
  ids = jnp.maximum(inputs, 0)
  rows = word_rows[ids].reshape(inputs.shape[0], -1)     # [B, k*S]
  mask = (word_mask[ids] * (inputs >= 0)[..., None]).reshape(rows.shape)
  mask = mask / jnp.maximum(mask.sum(1, keepdims=True), 1.0)
  h = jnp.einsum("bn,bnd->bd", mask, w_in[rows])          # mean of the input rows
  draws = jax.random.randint(key, (inputs.shape[0], negative), 0, negatives_table.shape[0])
  negs = negatives_table[draws]
  targets = jnp.concatenate([outputs[:, None], negs], axis=1)        # [B, 1+K]
  v = w_out[targets]
  logits = jnp.einsum("bd,bkd->bk", h, v)
  labels = jnp.zeros_like(logits).at[:, 0].set(1.0)
  # A negative that is the positive word is skipped (word2vec's `if (target == word) continue`).
  use = jnp.concatenate([jnp.ones_like(outputs[:, None], bool), negs != outputs[:, None]], 1)
  use = use & valid[:, None]
  g = jnp.where(use, labels - jax.nn.sigmoid(logits), 0.0) * lr
  loss = -jnp.sum(jnp.where(use, jax.nn.log_sigmoid(jnp.where(labels > 0, logits, -logits)),
                            0.0))
  d_in = jnp.einsum("bk,bkd->bd", g, v)
  d_out = g[..., None] * h[:, None, :]
  dim = w_in.shape[1]
  w_out = w_out.at[targets.reshape(-1)].add(d_out.reshape(-1, dim))
  in_weight = (mask > 0).astype(w_in.dtype)              # every input row gets the whole d_in
  w_in = w_in.at[rows.reshape(-1)].add((in_weight[..., None] * d_in[:, None, :])
                                       .reshape(-1, dim))
  return (w_in, w_out), (loss, jnp.sum(valid))


@functools.partial(jax.jit, static_argnames=("negative",), donate_argnums=(0,))
def train_chunk(tables, inputs, outputs, lrs, valid, first_batch, *, word_rows, word_mask,
                negatives_table, seed_key, negative: int):
  """Updates `tables` (w_in, w_out) by the batches inputs [C,B,k], outputs [C,B], lrs [C],
  valid [C,B]; batch c draws its negatives from fold_in(seed_key, first_batch + c), so a
  resumed run draws what an uninterrupted one would. Returns (tables, summed loss, pairs)."""

  def body(tables, xs):
    c, batch = xs
    key = jax.random.fold_in(seed_key, first_batch + c)
    return _batch_update(tables, batch, word_rows=word_rows, word_mask=word_mask,
                         negatives_table=negatives_table, negative=negative, key=key)

  steps = jnp.arange(inputs.shape[0])
  tables, (losses, counts) = jax.lax.scan(body, tables, (steps, (inputs, outputs, lrs, valid)))
  return tables, losses.sum(), counts.sum()
