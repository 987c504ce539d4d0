"""The encoder-decoder Transformer ("Attention is all you need") as functional Linen modules.

Sinusoidal positions added to sqrt(d)-scaled token embeddings; an encoder of self-attention
blocks; a decoder of causal self-attention, cross-attention and feed-forward blocks; post-LN
(the paper) or pre-LN (with a final LayerNorm on each stack). Source and target can share one
embedding table, and the output projection can be that table transposed.

Entry points: `__call__` (teacher forcing: logits for every target position), `encode`,
`decode`. With `decode=True` the decoder runs one position per call against a key/value cache
(the "cache" collection: per self-attention layer the keys and values written so far and the
next index) so step t costs O(t) instead of recomputing the whole prefix.

Layers are an unrolled Python loop rather than `nn.scan`: seq2seq stacks are shallow and the
per-layer cache stays a plain tree that beam search can reorder row by row.
Parameters carry logical axis names and go through bert.dense / bert.layer_norm, so the one
rule list in flaxbert/sharding.py shards them as it shards BERT.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.models import attention as attention_lib
from flaxbert.models.bert import Dense, activation, layer_norm, logical
from flaxbert.models.encdec_config import EncDecConfig

constrain = nn.with_logical_constraint


def dense(cfg: EncDecConfig, features, names, name: str, axis=-1) -> Dense:
  """bert.Dense with the config's kernel std, or Glorot's for this kernel's fans when the
  config leaves it unset (fan_in = hidden_size for every encoder-decoder kernel but the FFN
  output's, whose input is intermediate_size)."""
  features = features if isinstance(features, tuple) else (features,)
  num_in = len(axis) if isinstance(axis, tuple) else 1
  std = cfg.initializer_range
  if std is None:
    fan_in = cfg.intermediate_size if names[0] == "mlp" else cfg.hidden_size
    std = float(np.sqrt(2.0 / (fan_in + np.prod(features))))
  return Dense(features, tuple(names), num_in, cfg.dtype, std, name=name)


def shift_right(target_ids_BxT, start_id: int):
  """Decoder inputs for teacher forcing: [start, t0, ..., t_{T-2}]."""
  start_Bx1 = jnp.full((target_ids_BxT.shape[0], 1), start_id, target_ids_BxT.dtype)
  return jnp.concatenate([start_Bx1, target_ids_BxT[:, :-1]], axis=1)


def sinusoidal_positions(positions_BxL, hidden: int):
  """PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...), interleaved as in the paper."""
  inv_freq_H = 1.0 / (10000.0 ** (np.arange(0, hidden, 2, dtype=np.float32) / hidden))
  angles_BxLxH = positions_BxL.astype(jnp.float32)[..., None] * inv_freq_H
  return jnp.stack([jnp.sin(angles_BxLxH), jnp.cos(angles_BxLxH)],
                   axis=-1).reshape(positions_BxL.shape + (hidden,))


class MultiHeadAttention(nn.Module):
  """Self- or cross-attention; with `decode`, causal self-attention over a key/value cache."""

  config: EncDecConfig
  causal: bool = False

  @nn.compact
  def __call__(self, x_BxLxD, memory_BxTxD, kv_mask_BxT, deterministic: bool,
               decode: bool = False):
    cfg = self.config
    n, h = cfg.num_heads, cfg.head_dim
    q_BxLxNxH = dense(cfg, (n, h), ("embed", "heads", "kv"), "query")(x_BxLxD)
    if decode and not self.causal and self.has_variable("cache", "cross_key"):
      # Cross-attention while decoding: the encoder memory's keys and values are the same at
      # every step, so they were projected once, when the cache was made.
      k_BxTxNxH = self.get_variable("cache", "cross_key")
      v_BxTxNxH = self.get_variable("cache", "cross_value")
    else:
      k_BxTxNxH = dense(cfg, (n, h), ("embed", "heads", "kv"), "key")(memory_BxTxD)
      v_BxTxNxH = dense(cfg, (n, h), ("embed", "heads", "kv"), "value")(memory_BxTxD)
      if decode and not self.causal:
        self.put_variable("cache", "cross_key", k_BxTxNxH)
        self.put_variable("cache", "cross_value", v_BxTxNxH)
    causal = self.causal
    if decode and self.causal:
      k_BxTxNxH, v_BxTxNxH, kv_mask_BxT = self._cached(k_BxTxNxH, v_BxTxNxH)
      causal = False   # the cache mask already hides positions not yet written
    out_BxLxNxH = attention_lib.module_attention(
        self, cfg, q_BxLxNxH, k_BxTxNxH, v_BxTxNxH, kv_mask_BxT=kv_mask_BxT, causal=causal,
        deterministic=deterministic)
    out_BxLxNxH = constrain(out_BxLxNxH, ("batch", "length", "heads", "kv"))
    return dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), "out",
                 axis=(-2, -1))(out_BxLxNxH)

  def _cached(self, k_Bx1xNxH, v_Bx1xNxH):
    """Writes this step's key/value at the cache index; returns the whole cache and its mask.

    The first call (cache creation, from `init_cache` with a max-length dummy target) only
    allocates zeros of that length.
    """
    creating = not self.has_variable("cache", "cached_key")
    shape = k_Bx1xNxH.shape
    key = self.variable("cache", "cached_key", jnp.zeros, shape, k_Bx1xNxH.dtype)
    value = self.variable("cache", "cached_value", jnp.zeros, shape, v_Bx1xNxH.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if creating:
      return k_Bx1xNxH, v_Bx1xNxH, None
    i = index.value
    key.value = jax.lax.dynamic_update_slice(key.value, k_Bx1xNxH, (0, i, 0, 0))
    value.value = jax.lax.dynamic_update_slice(value.value, v_Bx1xNxH, (0, i, 0, 0))
    index.value = i + 1
    max_length = key.value.shape[1]
    mask_BxT = jnp.broadcast_to(jnp.arange(max_length) <= i, (shape[0], max_length))
    return key.value, value.value, mask_BxT


class FeedForward(nn.Module):
  config: EncDecConfig

  @nn.compact
  def __call__(self, x_BxLxD, deterministic: bool):
    cfg = self.config
    h_BxLxF = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "intermediate")(x_BxLxD)
    h_BxLxF = constrain(activation(cfg.hidden_act)(h_BxLxF), ("batch", "length", "mlp"))
    h_BxLxF = nn.Dropout(cfg.hidden_dropout)(h_BxLxF, deterministic=deterministic)
    return dense(cfg, cfg.hidden_size, ("mlp", "embed"), "output")(h_BxLxF)


class _Sublayer(nn.Module):
  """Residual wrapper: post-LN x = LN(x + Drop(f(x))), pre-LN x = x + Drop(f(LN(x)))."""

  config: EncDecConfig

  @nn.compact
  def __call__(self, x_BxLxD, fn, deterministic: bool):
    cfg = self.config
    norm = layer_norm(cfg, "norm")
    y_BxLxD = fn(norm(x_BxLxD) if cfg.pre_ln else x_BxLxD)
    y_BxLxD = nn.Dropout(cfg.hidden_dropout)(y_BxLxD, deterministic=deterministic)
    x_BxLxD = x_BxLxD + y_BxLxD
    if not cfg.pre_ln:
      x_BxLxD = norm(x_BxLxD)
    return constrain(x_BxLxD.astype(cfg.dtype), ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
  config: EncDecConfig

  @nn.compact
  def __call__(self, x_BxSxD, mask_BxS, deterministic: bool):
    cfg = self.config
    attention = MultiHeadAttention(cfg, name="self_attention")
    x_BxSxD = _Sublayer(cfg, name="attention_block")(
        x_BxSxD, lambda y: attention(y, y, mask_BxS, deterministic), deterministic)
    ffn = FeedForward(cfg, name="ffn")
    return _Sublayer(cfg, name="ffn_block")(x_BxSxD, lambda y: ffn(y, deterministic),
                                            deterministic)


class DecoderLayer(nn.Module):
  config: EncDecConfig

  @nn.compact
  def __call__(self, y_BxTxD, encoded_BxSxD, source_mask_BxS, deterministic: bool,
               decode: bool):
    cfg = self.config
    self_attention = MultiHeadAttention(cfg, causal=True, name="self_attention")
    y_BxTxD = _Sublayer(cfg, name="self_attention_block")(
        y_BxTxD, lambda z: self_attention(z, z, None, deterministic, decode), deterministic)
    cross = MultiHeadAttention(cfg, name="cross_attention")
    y_BxTxD = _Sublayer(cfg, name="cross_attention_block")(
        y_BxTxD, lambda z: cross(z, encoded_BxSxD, source_mask_BxS, deterministic),
        deterministic)
    ffn = FeedForward(cfg, name="ffn")
    return _Sublayer(cfg, name="ffn_block")(y_BxTxD, lambda z: ffn(z, deterministic),
                                            deterministic)


class _DecodePosition(nn.Module):
  """The target position incremental decoding has reached (in the "cache" collection)."""

  @nn.compact
  def __call__(self, steps: int):
    position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
    start = position.value
    position.value = start + steps
    return start


class EncDecModel(nn.Module):
  """Teacher forcing: `__call__(source_ids, source_mask, decoder_input_ids)` -> {"logits"}
  (float32, B x T x V). Inference: `encode`, then `decode` one step at a time with
  `decode=True` and the "cache" collection mutable."""

  config: EncDecConfig

  def setup(self):
    cfg = self.config
    embed_init = logical(nn.initializers.normal(stddev=cfg.hidden_size ** -0.5),
                         ("vocab", "embed"))
    self.source_embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=jnp.float32,
                                 embedding_init=embed_init)
    self.target_embed = (self.source_embed if cfg.share_embeddings else
                         nn.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=jnp.float32,
                                  embedding_init=embed_init))
    self.encoder_layers = [EncoderLayer(cfg, name=f"encoder_{i}")
                           for i in range(cfg.num_encoder_layers)]
    self.decoder_layers = [DecoderLayer(cfg, name=f"decoder_{i}")
                           for i in range(cfg.num_decoder_layers)]
    if cfg.pre_ln:
      self.encoder_norm = layer_norm(cfg, "encoder_norm")
      self.decoder_norm = layer_norm(cfg, "decoder_norm")
    if not cfg.tie_output:
      self.output = dense(cfg, cfg.vocab_size, ("embed", "vocab"), "output")
    self.dropout = nn.Dropout(cfg.hidden_dropout)
    self.decode_position = _DecodePosition()

  def _embed(self, table: nn.Embed, ids_BxL, positions_BxL, deterministic: bool):
    cfg = self.config
    x_BxLxD = (table(ids_BxL) * np.sqrt(cfg.hidden_size)
               + sinusoidal_positions(positions_BxL, cfg.hidden_size))
    x_BxLxD = self.dropout(x_BxLxD, deterministic=deterministic)
    return constrain(x_BxLxD.astype(cfg.dtype), ("batch", "length", "embed"))

  def encode(self, source_ids_BxS, source_mask_BxS, deterministic: bool = True):
    """Encoder output B x S x D in compute dtype."""
    positions_BxS = jnp.broadcast_to(jnp.arange(source_ids_BxS.shape[1]), source_ids_BxS.shape)
    x_BxSxD = self._embed(self.source_embed, source_ids_BxS, positions_BxS, deterministic)
    for layer in self.encoder_layers:
      x_BxSxD = layer(x_BxSxD, source_mask_BxS, deterministic)
    if self.config.pre_ln:
      x_BxSxD = self.encoder_norm(x_BxSxD)
    return x_BxSxD

  def decode(self, decoder_input_ids_BxT, encoded_BxSxD, source_mask_BxS,
             deterministic: bool = True, decode: bool = False):
    """Logits (float32, B x T x V) of the next token after each decoder input.

    decode=True: the inputs are one step (T = 1) at the position the cache has reached; the
    first such call on fresh variables (`init_cache`) only allocates the cache.
    """
    cfg = self.config
    if decode:
      start = self.decode_position(decoder_input_ids_BxT.shape[1])
      positions_BxT = start + jnp.broadcast_to(jnp.arange(decoder_input_ids_BxT.shape[1]),
                                               decoder_input_ids_BxT.shape)
    else:
      positions_BxT = jnp.broadcast_to(jnp.arange(decoder_input_ids_BxT.shape[1]),
                                       decoder_input_ids_BxT.shape)
    y_BxTxD = self._embed(self.target_embed, decoder_input_ids_BxT, positions_BxT,
                          deterministic)
    for layer in self.decoder_layers:
      y_BxTxD = layer(y_BxTxD, encoded_BxSxD, source_mask_BxS, deterministic, decode)
    if cfg.pre_ln:
      y_BxTxD = self.decoder_norm(y_BxTxD)
    if cfg.tie_output:
      table_VxD = self.target_embed.embedding
      logits_BxTxV = jnp.einsum("btd,vd->btv", y_BxTxD, table_VxD.astype(cfg.dtype))
    else:
      logits_BxTxV = self.output(y_BxTxD)
    logits_BxTxV = constrain(logits_BxTxV, ("batch", "length", "vocab"))
    return logits_BxTxV.astype(jnp.float32)

  def __call__(self, source_ids, source_mask, decoder_input_ids, deterministic: bool = True):
    encoded_BxSxD = self.encode(source_ids, source_mask, deterministic)
    return {"logits": self.decode(decoder_input_ids, encoded_BxSxD, source_mask,
                                  deterministic)}


def dummy_inputs(batch: int = 1, source_length: int = 8, target_length: int = 8) -> dict:
  return {"source_ids": jnp.zeros((batch, source_length), jnp.int32),
          "source_mask": jnp.ones((batch, source_length), jnp.int32),
          "decoder_input_ids": jnp.zeros((batch, target_length), jnp.int32)}


def init_params(model: EncDecModel, rng, *, boxed: bool = False):
  params = model.init(rng, **dummy_inputs())["params"]
  return params if boxed else nn.meta.unbox(params)


CROSS_CACHE = ("cross_key", "cross_value")   # per source, the same for all of its beams


def init_cache(model: EncDecModel, params, encoded_BxSxD, source_mask_BxS, max_length: int):
  """The decoding cache of this batch: zeroed self-attention keys/values for `max_length`
  steps, and each layer's cross-attention keys/values of the encoder output."""
  dummy_BxT = jnp.zeros((encoded_BxSxD.shape[0], max_length), jnp.int32)
  _, variables = model.apply({"params": params}, dummy_BxT, encoded_BxSxD, source_mask_BxS,
                             decode=True, method=EncDecModel.decode, mutable=["cache"])
  # The creation call ran once over the dummy: reset the position it advanced.
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if path[-1].key == "position" else x,
      variables["cache"])
