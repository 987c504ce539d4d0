"""The negative-sampling update, jitted once and run over a chunk of batches with lax.scan.

Per example: h = mean of the input-table rows of its input words (skip-gram: one word; CBOW:
the window's words; with subwords each word adds its n-gram buckets' rows too); the output
word is the positive, and `negative` words drawn from the unigram^0.75 table the negatives;
with g = lr * (label - sigmoid(h . v)), each output row gets g * h and each input row the
whole sum of g * v (undivided, as word2vec, gensim and fastText do). A batch's updates are
summed into the tables by scatter-adds: only the rows touched are written.

Shared negatives (`group` > 1): consecutive examples of a batch (far apart in the corpus)
form groups of `group` that draw one set of negatives together. Each example still meets
`negative` independent draws from the unigram^0.75 distribution, but a group's negative rows
are read and written once instead of `group` times (2 + negative / group rows per example
instead of 2 + negative). group=1 is word2vec's own sampling.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Input rows per example up to which the gathers and scatters are unrolled a column at a
# time (skip-gram with subwords has about 60, CBOW 2 * window; CBOW with subwords, hundreds,
# would take minutes to compile unrolled).
MAX_UNROLLED = 96


def _batch_update(tables, batch, *, word_rows, word_mask, negatives_table, negative: int,
                  group: int, key):
  w_in, w_out = tables
  inputs, outputs, lr, valid = batch                     # [B,k], [B], [], [B]
  size, dim = outputs.shape[0], w_in.shape[1]
  # One input row per example (skip-gram without subwords): the row is the word itself.
  # Padding examples (-1) then read row 0, but their updates are all zero (valid is False).
  direct = inputs.shape[1] == 1 and word_rows.shape[1] == 1
  if direct:
    rows = inputs[:, 0]
    h = w_in[rows]
  else:
    ids = jnp.maximum(inputs, 0)
    rows = word_rows[ids].reshape(size, -1)              # [B, k*S]
    present = (word_mask[ids] * (inputs >= 0)[..., None]).reshape(rows.shape)
    mean = present / jnp.maximum(present.sum(1, keepdims=True), 1.0)
    # Mean of the input rows, a column at a time: one [B, D] gather each, where a batched
    # einsum over [B, k*S, D] measured 1.4x slower for CBOW.
    if rows.shape[1] <= MAX_UNROLLED:
      h = sum(mean[:, j, None] * w_in[rows[:, j]] for j in range(rows.shape[1]))
    else:
      h = jnp.einsum("bn,bnd->bd", mean, w_in[rows])
  v_pos = w_out[outputs]
  draws = jax.random.randint(key, (size // group, negative), 0, negatives_table.shape[0])
  negs = negatives_table[draws]                           # [G, K]
  v_neg = w_out[negs]                                     # [G, K, D]
  hg = h.reshape(size // group, group, dim)
  logit_pos = jnp.sum(h * v_pos, -1)
  logit_neg = jnp.einsum("gjd,gkd->gjk", hg, v_neg)       # [G, group, K]
  # A negative that is the positive word is skipped (word2vec's `if (target == word) continue`).
  use_neg = (negs[:, None, :] != outputs.reshape(-1, group)[..., None]) \
      & valid.reshape(-1, group)[..., None]
  s_pos, s_neg = jax.nn.sigmoid(logit_pos), jax.nn.sigmoid(logit_neg)
  g_pos = jnp.where(valid, 1.0 - s_pos, 0.0) * lr
  g_neg = jnp.where(use_neg, -s_neg, 0.0) * lr
  # The loss (a metric only) from the sigmoids already made, each term capped at -log(1e-7):
  # jax.nn.log_sigmoid's log1p on the XLA CPU was a third of the step's time.
  loss = -(jnp.sum(jnp.where(valid, jnp.log(jnp.maximum(s_pos, 1e-7)), 0.0))
           + jnp.sum(jnp.where(use_neg, jnp.log(jnp.maximum(1.0 - s_neg, 1e-7)), 0.0)))
  # Written as broadcast products, summed (over the K negatives unrolled), rather than as
  # batched einsums: XLA's CPU dot runs a group's [group x K x D] products one small matmul
  # at a time, which measured 1.9x slower for the whole step.
  d_in = g_pos[:, None] * v_pos + sum(g_neg[:, :, k, None] * v_neg[:, None, k]
                                      for k in range(negative)).reshape(size, dim)
  d_neg = jnp.sum(g_neg[..., None] * hg[:, :, None, :], 1)          # [G, K, D]
  w_out = w_out.at[jnp.concatenate([outputs, negs.reshape(-1)])].add(
      jnp.concatenate([g_pos[:, None] * h, d_neg.reshape(-1, dim)]))
  if direct:
    w_in = w_in.at[rows].add(d_in)
  else:
    # Every input row gets the whole d_in: one scatter of [B, D] per column, absent rows sent
    # out of range and dropped. One scatter of the broadcast [B, k*S, D] measured 3.5x slower
    # for CBOW's whole step (the barrier keeps d_in made once, not inside each scatter).
    d_in = jax.lax.optimization_barrier(d_in)
    absent_to_end = jnp.where(present > 0, rows, w_in.shape[0])
    if rows.shape[1] <= MAX_UNROLLED:
      for j in range(rows.shape[1]):
        w_in = w_in.at[absent_to_end[:, j]].add(d_in, mode="drop")
    else:
      w_in = w_in.at[absent_to_end.reshape(-1)].add(
          jnp.broadcast_to(d_in[:, None, :], (*rows.shape, dim)).reshape(-1, dim), mode="drop")
  return (w_in, w_out), (loss, jnp.sum(valid))


@functools.partial(jax.jit, static_argnames=("negative", "group"), donate_argnums=(0,))
def train_chunk(tables, inputs, outputs, lrs, valid, first_batch, *, word_rows, word_mask,
                negatives_table, seed_key, negative: int, group: int = 1):
  """Updates `tables` (w_in, w_out) by the batches inputs [C,B,k], outputs [C,B], lrs [C],
  valid [C,B] (B a multiple of group); batch c draws its negatives from
  fold_in(seed_key, first_batch + c), so a resumed run draws what an uninterrupted one would.
  Returns (tables, summed loss, examples)."""

  def body(tables, xs):
    c, batch = xs
    key = jax.random.fold_in(seed_key, first_batch + c)
    return _batch_update(tables, batch, word_rows=word_rows, word_mask=word_mask,
                         negatives_table=negatives_table, negative=negative, group=group,
                         key=key)

  steps = jnp.arange(inputs.shape[0])
  tables, (losses, counts) = jax.lax.scan(body, tables, (steps, (inputs, outputs, lrs, valid)))
  return tables, losses.sum(), counts.sum()
