"""Greedy and beam-search decoding for the encoder-decoder, one step at a time over the
key/value cache, for a padded batch of sources.

Both return token ids [B, max_length] (the decoder start token excluded) padded with
`pad_token_id` after each row's EOS; `strip_eos` turns a row into the list of ids before EOS.
Each decoding function is compiled once per (config, max_length, beam settings) and reused.

Beam search keeps, per source, `beam_size` live hypotheses (not ended) and `beam_size`
finished ones (ended with EOS), scored log P / lp(length) with GNMT's length penalty
lp = ((5 + length) / 6) ** alpha (alpha = 0: plain log-probability). Each step it expands the
live beams, takes the top 2K candidates (enough that K of them are not EOS), moves EOS
candidates into the finished set and keeps the best K others live. It stops when no live
hypothesis can still beat the worst finished one, or at max_length; a source with no finished
hypothesis then returns its best live one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.models.encdec import CROSS_CACHE, EncDecModel, init_cache

NEG_INF = -1.0e9


def strip_eos(ids, eos_id: int) -> list[int]:
  """The ids of one decoded row before its first EOS."""
  out = []
  for token in np.asarray(ids).tolist():
    if token == eos_id:
      break
    out.append(token)
  return out


def _step(model, params, cache, tokens_Bx1, encoded_BxSxD, source_mask_BxS,
          num_tokens: int | None):
  """Next-token logits; ids from `num_tokens` up (the rows that round the embedding table up
  to a multiple of 128, which no tokenizer can decode) at NEG_INF so they are never chosen."""
  logits_Bx1xV, variables = model.apply(
      {"params": params, "cache": cache}, tokens_Bx1, encoded_BxSxD, source_mask_BxS,
      decode=True, method=EncDecModel.decode, mutable=["cache"])
  logits_BxV = logits_Bx1xV[:, 0]
  if num_tokens is not None and num_tokens < logits_BxV.shape[-1]:
    logits_BxV = jnp.where(jnp.arange(logits_BxV.shape[-1]) < num_tokens, logits_BxV, NEG_INF)
  return logits_BxV, variables["cache"]


def _greedy(model: EncDecModel, max_length: int, num_tokens: int | None, params,
            source_ids_BxS, source_mask_BxS):
  cfg = model.config
  batch = source_ids_BxS.shape[0]
  encoded_BxSxD = model.apply({"params": params}, source_ids_BxS, source_mask_BxS,
                              method=EncDecModel.encode)
  cache = init_cache(model, params, encoded_BxSxD, source_mask_BxS, max_length)
  out_BxT = jnp.full((batch, max_length), cfg.pad_token_id, jnp.int32)

  def cond(carry):
    i, _, _, _, done_B = carry
    return (i < max_length) & ~jnp.all(done_B)

  def body(carry):
    i, last_B, out_BxT, cache, done_B = carry
    logits_BxV, cache = _step(model, params, cache, last_B[:, None], encoded_BxSxD,
                              source_mask_BxS, num_tokens)
    token_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    token_B = jnp.where(done_B, cfg.pad_token_id, token_B)
    out_BxT = jax.lax.dynamic_update_slice(out_BxT, token_B[:, None], (0, i))
    return i + 1, token_B, out_BxT, cache, done_B | (token_B == cfg.eos_token_id)

  start_B = jnp.full((batch,), cfg.decoder_start_id, jnp.int32)
  carry = (jnp.zeros((), jnp.int32), start_B, out_BxT, cache, jnp.zeros((batch,), bool))
  return jax.lax.while_loop(cond, body, carry)[2]


def length_penalty(length, alpha: float):
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def _gather_beams(tree, beam_indices_BxK, batch: int, old_beams: int, flat: bool = False):
  """Picks beams of every [B, old_beams, ...] array (flat: [B*old_beams, ...], as the cache
  is laid out) by beam index; scalars (the cache's step counters) and the cross-attention
  keys/values (equal across a source's beams) are kept."""
  def gather(path, x):
    if x.ndim == 0 or (path and getattr(path[-1], "key", None) in CROSS_CACHE):
      return x
    x_BxKx = x.reshape((batch, old_beams) + x.shape[1:]) if flat else x
    picked = jnp.take_along_axis(
        x_BxKx, beam_indices_BxK.reshape(beam_indices_BxK.shape + (1,) * (x_BxKx.ndim - 2)),
        axis=1)
    return picked.reshape((-1,) + picked.shape[2:]) if flat else picked
  return jax.tree_util.tree_map_with_path(gather, tree)


def _beam(model: EncDecModel, max_length: int, beam_size: int, alpha: float,
          num_tokens: int | None, params, source_ids_BxS, source_mask_BxS):
  cfg = model.config
  batch, k = source_ids_BxS.shape[0], beam_size
  eos, pad = cfg.eos_token_id, cfg.pad_token_id
  # Encode once, then repeat each source K times: rows b*K .. b*K+K-1 are source b's beams.
  encoded_BxSxD = model.apply({"params": params}, source_ids_BxS, source_mask_BxS,
                              method=EncDecModel.encode)
  encoded_BKxSxD = jnp.repeat(encoded_BxSxD, k, axis=0)
  mask_BKxS = jnp.repeat(source_mask_BxS, k, axis=0)
  cache = init_cache(model, params, encoded_BKxSxD, mask_BKxS, max_length)

  live_seqs_BxKxT = jnp.full((batch, k, max_length), pad, jnp.int32)
  # Only the first beam is live at the start, so the K beams do not repeat one hypothesis.
  live_logp_BxK = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
  fin_seqs_BxKxT = jnp.full((batch, k, max_length), pad, jnp.int32)
  fin_scores_BxK = jnp.full((batch, k), NEG_INF, jnp.float32)
  last_BK = jnp.full((batch * k,), cfg.decoder_start_id, jnp.int32)
  max_penalty = length_penalty(jnp.array(max_length), alpha)

  def cond(carry):
    i, _, _, live_logp_BxK, _, fin_scores_BxK, _ = carry
    # Log-probabilities only fall as hypotheses grow; with alpha >= 0 the penalty only
    # grows, so a live beam's best possible final score is its log P over lp(max_length).
    best_live_B = live_logp_BxK[:, 0] / (max_penalty if alpha > 0 else 1.0)
    worst_finished_B = jnp.min(fin_scores_BxK, axis=1)
    return (i < max_length) & ~jnp.all(worst_finished_B > best_live_B)

  def body(carry):
    i, last_BK, live_seqs_BxKxT, live_logp_BxK, fin_seqs_BxKxT, fin_scores_BxK, cache = carry
    logits_BKxV, cache = _step(model, params, cache, last_BK[:, None], encoded_BKxSxD,
                               mask_BKxS, num_tokens)
    vocab = logits_BKxV.shape[-1]
    logp_BxKxV = jax.nn.log_softmax(logits_BKxV).reshape(batch, k, vocab)
    cand_BxKV = (live_logp_BxK[:, :, None] + logp_BxKxV).reshape(batch, k * vocab)
    top_logp_Bx2K, top_index_Bx2K = jax.lax.top_k(cand_BxKV, 2 * k)
    top_beam_Bx2K, top_token_Bx2K = top_index_Bx2K // vocab, top_index_Bx2K % vocab
    top_seqs_Bx2KxT = _gather_beams(live_seqs_BxKxT, top_beam_Bx2K, batch, k)
    top_seqs_Bx2KxT = top_seqs_Bx2KxT.at[:, :, i].set(top_token_Bx2K)
    is_eos_Bx2K = top_token_Bx2K == eos

    # Live: the best K candidates that did not end.
    live_cand_Bx2K = jnp.where(is_eos_Bx2K, NEG_INF, top_logp_Bx2K)
    live_logp_BxK, keep_BxK = jax.lax.top_k(live_cand_Bx2K, k)
    live_seqs_BxKxT = _gather_beams(top_seqs_Bx2KxT, keep_BxK, batch, 2 * k)
    source_beam_BxK = jnp.take_along_axis(top_beam_Bx2K, keep_BxK, axis=1)
    cache = _gather_beams(cache, source_beam_BxK, batch, k, flat=True)
    last_BK = jnp.take_along_axis(top_token_Bx2K, keep_BxK, axis=1).reshape(-1)

    # Finished: the best K of the old finished and this step's EOS candidates.
    new_scores_Bx2K = jnp.where(is_eos_Bx2K & (top_logp_Bx2K > NEG_INF / 2),
                                top_logp_Bx2K / length_penalty(i + 1, alpha), NEG_INF)
    all_scores_Bx3K = jnp.concatenate([fin_scores_BxK, new_scores_Bx2K], axis=1)
    all_seqs_Bx3KxT = jnp.concatenate([fin_seqs_BxKxT, top_seqs_Bx2KxT], axis=1)
    fin_scores_BxK, best_BxK = jax.lax.top_k(all_scores_Bx3K, k)
    fin_seqs_BxKxT = _gather_beams(all_seqs_Bx3KxT, best_BxK, batch, 3 * k)
    return (i + 1, last_BK, live_seqs_BxKxT, live_logp_BxK, fin_seqs_BxKxT, fin_scores_BxK,
            cache)

  carry = (jnp.zeros((), jnp.int32), last_BK, live_seqs_BxKxT, live_logp_BxK,
           fin_seqs_BxKxT, fin_scores_BxK, cache)
  _, _, live_seqs_BxKxT, _, fin_seqs_BxKxT, fin_scores_BxK, _ = jax.lax.while_loop(
      cond, body, carry)
  has_finished_B = fin_scores_BxK[:, 0] > NEG_INF / 2
  return jnp.where(has_finished_B[:, None], fin_seqs_BxKxT[:, 0], live_seqs_BxKxT[:, 0])


@functools.lru_cache(maxsize=32)
def _compiled(model: EncDecModel, max_length: int, beam_size: int, alpha: float,
              num_tokens: int | None):
  if beam_size <= 0:
    return jax.jit(functools.partial(_greedy, model, max_length, num_tokens))
  return jax.jit(functools.partial(_beam, model, max_length, beam_size, alpha, num_tokens))


def greedy_search(model: EncDecModel, params, source_ids_BxS, source_mask_BxS, *,
                  max_length: int, num_tokens: int | None = None):
  """Greedy decoding: [B, max_length] int32 ids, `pad` after each row's EOS; with
  `num_tokens` (the tokenizer's vocabulary size) only ids below it."""
  return _compiled(model, max_length, 0, 0.0, num_tokens)(
      params, jnp.asarray(source_ids_BxS), jnp.asarray(source_mask_BxS))


def beam_search(model: EncDecModel, params, source_ids_BxS, source_mask_BxS, *,
                max_length: int, beam_size: int = 4, alpha: float = 0.6,
                num_tokens: int | None = None):
  """Beam search: the best finished hypothesis per source, [B, max_length] int32 ids."""
  if beam_size < 1:
    raise ValueError("beam_size must be at least 1")
  return _compiled(model, max_length, beam_size, float(alpha), num_tokens)(
      params, jnp.asarray(source_ids_BxS), jnp.asarray(source_mask_BxS))


def generate(model: EncDecModel, params, source_ids_BxS, source_mask_BxS, *, max_length: int,
             beam_size: int = 1, alpha: float = 0.6, num_tokens: int | None = None):
  """Greedy for beam_size 1, beam search otherwise."""
  if beam_size <= 1:
    return greedy_search(model, params, source_ids_BxS, source_mask_BxS,
                         max_length=max_length, num_tokens=num_tokens)
  return beam_search(model, params, source_ids_BxS, source_mask_BxS, max_length=max_length,
                     beam_size=beam_size, alpha=alpha, num_tokens=num_tokens)
