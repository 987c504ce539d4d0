"""The one attention function every model calls.

Fast path: `jax.nn.dot_product_attention`, which on GPU runs cuDNN's fused kernel (bf16/fp16,
head dim a multiple of 8, padding given as key lengths rather than a dense mask) and elsewhere
XLA's implementation. It has no dropout, so when attention-probability dropout is active
(training with `attention_dropout > 0`) the explicit einsum path below is used instead.
Softmax is computed in float32 on every path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flaxbert.errors import FlaxbertError


def choose_implementation(requested: str, dtype, head_dim: int) -> str:
  """'cudnn' or 'xla' for the fast path, from the config's `attention_impl`."""
  cudnn_ok = (jax.default_backend() == "gpu"
              and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
              and head_dim % 8 == 0 and head_dim <= 128)
  if requested == "auto":
    return "cudnn" if cudnn_ok else "xla"
  if requested == "cudnn" and not cudnn_ok:
    raise FlaxbertError("attention_impl 'cudnn' needs a GPU, bf16/fp16 compute and a head "
                        f"dim that is a multiple of 8 up to 128 (head dim {head_dim}, "
                        f"dtype {jnp.dtype(dtype).name}, backend {jax.default_backend()})")
  return requested


def pair_mask(segments_BxL):
  """Block-diagonal attention for packed rows: True where query and key share a segment id
  (padding, id 0, sees only padding, so no row of the softmax is empty): B x L x L."""
  return segments_BxL[:, :, None] == segments_BxL[:, None, :]


def attention(q_BxLxNxH, k_BxTxNxH, v_BxTxNxH, *, kv_mask_BxT=None, mask_BxLxT=None,
              causal: bool = False, dropout_rate: float = 0.0, dropout_rng=None,
              implementation: str = "xla"):
  """Multi-head scaled dot-product attention; returns B x L x N x H in the query's dtype.

  kv_mask_BxT marks real (non-padding) keys. On the cuDNN path it is turned into per-row key
  lengths, which assumes padding sits at the end of each row, as every flaxbert pipeline
  produces it. mask_BxLxT (e.g. `pair_mask` of packed rows) is a full query x key mask,
  given to the kernel as a dense mask on every path.
  """
  if dropout_rate > 0.0 and dropout_rng is not None:
    return _attention_with_dropout(q_BxLxNxH, k_BxTxNxH, v_BxTxNxH, kv_mask_BxT, mask_BxLxT,
                                   causal, dropout_rate, dropout_rng)
  full = None if mask_BxLxT is None else mask_BxLxT.astype(bool)[:, None]
  if implementation == "cudnn":
    lengths_B = None
    if kv_mask_BxT is not None:
      lengths_B = jnp.sum(kv_mask_BxT.astype(jnp.int32), axis=-1)
    return jax.nn.dot_product_attention(
        q_BxLxNxH, k_BxTxNxH, v_BxTxNxH, mask=full, is_causal=causal,
        key_value_seq_lengths=lengths_B, implementation="cudnn")
  mask = None if kv_mask_BxT is None else kv_mask_BxT.astype(bool)[:, None, None, :]
  if full is not None:
    mask = full if mask is None else mask & full
  return jax.nn.dot_product_attention(q_BxLxNxH, k_BxTxNxH, v_BxTxNxH, mask=mask,
                                      is_causal=causal, implementation="xla")


def _attention_with_dropout(q_BxLxNxH, k_BxTxNxH, v_BxTxNxH, kv_mask_BxT, mask_BxLxT, causal,
                            dropout_rate, dropout_rng):
  dtype = q_BxLxNxH.dtype
  scale = q_BxLxNxH.shape[-1] ** -0.5
  logits_BxNxLxT = jnp.einsum("blnh,btnh->bnlt", q_BxLxNxH, k_BxTxNxH,
                              preferred_element_type=jnp.float32) * scale
  big_neg = jnp.finfo(jnp.float32).min
  if kv_mask_BxT is not None:
    logits_BxNxLxT = jnp.where(kv_mask_BxT.astype(bool)[:, None, None, :], logits_BxNxLxT,
                               big_neg)
  if mask_BxLxT is not None:
    logits_BxNxLxT = jnp.where(mask_BxLxT.astype(bool)[:, None], logits_BxNxLxT, big_neg)
  if causal:
    length, keys = logits_BxNxLxT.shape[-2:]
    causal_LxT = jnp.tril(jnp.ones((length, keys), bool), keys - length)
    logits_BxNxLxT = jnp.where(causal_LxT, logits_BxNxLxT, big_neg)
  probs_BxNxLxT = jax.nn.softmax(logits_BxNxLxT, axis=-1)
  keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BxNxLxT.shape)
  probs_BxNxLxT = jnp.where(keep, probs_BxNxLxT / (1.0 - dropout_rate), 0.0).astype(dtype)
  return jnp.einsum("bnlt,btnh->blnh", probs_BxNxLxT, v_BxTxNxH)


def module_attention(module, config, q_BxLxNxH, k_BxTxNxH, v_BxTxNxH, *, kv_mask_BxT=None,
                     mask_BxLxT=None, causal: bool = False, deterministic: bool = True):
  """`attention` as a Linen module calls it: dropout (and its RNG stream) from the module's
  config when training, the implementation from `config.attention_impl`."""
  use_dropout = not deterministic and config.attention_dropout > 0.0
  return attention(
      q_BxLxNxH, k_BxTxNxH, v_BxTxNxH, kv_mask_BxT=kv_mask_BxT, mask_BxLxT=mask_BxLxT,
      causal=causal,
      dropout_rate=config.attention_dropout if use_dropout else 0.0,
      dropout_rng=module.make_rng("dropout") if use_dropout else None,
      implementation=choose_implementation(config.attention_impl, config.dtype,
                                           q_BxLxNxH.shape[-1]))
