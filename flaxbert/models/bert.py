"""The BERT encoder as functional Flax Linen modules.

Embeddings (token + learned position + segment, LayerNorm, dropout), a scanned stack of
post-LN Transformer layers (fused QKV self-attention, exact-erf GELU feed-forward), and a tanh
pooler on [CLS]. Parameters are float32 and carry logical axis names; activations are pinned
with logical constraints at block boundaries, so one rules list (flaxbert/sharding.py) shards both.
Compute runs in `config.dtype`; LayerNorm statistics and softmax stay float32.

Distillation hook: applied with the "intermediates" collection mutable
(`model.apply(variables, ..., mutable=["intermediates"])`), `BertModel` also sows every hidden
state and the last layer's self-attention query, key and value, which `sown_distill_outputs`
reads back. Otherwise nothing is sown and the computation is the usual one.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxbert.models import attention as attention_lib
from flaxbert.models.config import BertConfig

constrain = nn.with_logical_constraint
QKV_NAMES = ("query", "key", "value")   # the sown last-layer self-attention inputs


def normal_init(config: BertConfig):
  return nn.initializers.normal(stddev=config.initializer_range)


def logical(init, names):
  return nn.with_logical_partitioning(init, names)


def activation(name: str):
  if name == "gelu":
    return functools.partial(nn.gelu, approximate=False)
  if name in ("gelu_new", "gelu_pytorch_tanh"):
    return functools.partial(nn.gelu, approximate=True)
  return nn.relu


def layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
  # Two-pass variance (use_fast_variance=False) as in PyTorch, for bit-level parity.
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=config.dtype,
                      param_dtype=jnp.float32, use_fast_variance=False,
                      scale_init=logical(nn.initializers.ones, ("embed",)),
                      bias_init=logical(nn.initializers.zeros, ("embed",)), name=name)


class Dense(nn.Module):
  """x @ kernel + bias over the last `len(in_names)` axes; kernel created at its full N-d shape.

  (Flax's DenseGeneral initialises a flat 2-d kernel and reshapes it, which trips logical
  sharding constraints under a mesh; an N-d parameter from the start has no such step.)
  """

  features: tuple[int, ...]
  names: tuple[str | None, ...]   # logical names of the kernel: input axes then output axes
  num_in: int
  dtype: str
  init_std: float

  @nn.compact
  def __call__(self, x):
    in_shape = x.shape[-self.num_in:]
    kernel = self.param("kernel", logical(nn.initializers.normal(self.init_std), self.names),
                        in_shape + self.features, jnp.float32)
    bias = self.param("bias", logical(nn.initializers.zeros, self.names[self.num_in:]),
                      self.features, jnp.float32)
    x = x.astype(self.dtype)
    contract = (tuple(range(x.ndim - self.num_in, x.ndim)), tuple(range(self.num_in)))
    y = jax.lax.dot_general(x, kernel.astype(self.dtype), (contract, ((), ())))
    return y + bias.astype(self.dtype)


def dense(config: BertConfig, features, names, name: str, axis=-1) -> Dense:
  """A dense layer whose kernel has logical axis `names`; its bias takes the output names."""
  features = features if isinstance(features, tuple) else (features,)
  num_in = len(axis) if isinstance(axis, tuple) else 1
  return Dense(features, tuple(names), num_in, config.dtype, config.initializer_range,
               name=name)


class Embeddings(nn.Module):
  config: BertConfig

  def setup(self):
    cfg = self.config
    self.word_embeddings = nn.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=jnp.float32,
                                    embedding_init=logical(normal_init(cfg), ("vocab", "embed")))
    self.position_embeddings = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                                        param_dtype=jnp.float32,
                                        embedding_init=logical(normal_init(cfg), (None, "embed")))
    self.token_type_embeddings = nn.Embed(cfg.type_vocab_size, cfg.hidden_size,
                                          param_dtype=jnp.float32,
                                          embedding_init=logical(normal_init(cfg),
                                                                 (None, "embed")))
    self.layer_norm = layer_norm(cfg, "layer_norm")
    self.dropout = nn.Dropout(cfg.hidden_dropout)

  def __call__(self, input_ids_BxL, segment_ids_BxL, position_ids_BxL, deterministic: bool):
    x_BxLxD = (self.word_embeddings(input_ids_BxL)
               + self.position_embeddings(position_ids_BxL)
               + self.token_type_embeddings(segment_ids_BxL))
    x_BxLxD = self.layer_norm(x_BxLxD)
    x_BxLxD = self.dropout(x_BxLxD, deterministic=deterministic)
    return constrain(x_BxLxD.astype(self.config.dtype), ("batch", "length", "embed"))

  def word_table(self):
    """The token embedding matrix (vocab x hidden), shared with the MLM decoder."""
    return self.word_embeddings.embedding


class SelfAttention(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x_BxLxD, mask, deterministic: bool):
    """mask: B x L key mask (1 = real token), or B x L x L for packed rows. Returns the
    block's output and its fused query/key/value, B x L x 3 x N x H (unused, so compiled away,
    unless a caller keeps it)."""
    cfg = self.config
    n, h = cfg.num_heads, cfg.head_dim
    # One fused projection for query, key and value: a single larger matmul.
    qkv_BxLx3xNxH = dense(cfg, (3, n, h), ("embed", None, "heads", "kv"), "qkv")(x_BxLxD)
    qkv_BxLx3xNxH = constrain(qkv_BxLx3xNxH, ("batch", "length", None, "heads", "kv"))
    q_BxLxNxH, k_BxLxNxH, v_BxLxNxH = (qkv_BxLx3xNxH[:, :, i] for i in range(3))
    out_BxLxNxH = attention_lib.module_attention(
        self, cfg, q_BxLxNxH, k_BxLxNxH, v_BxLxNxH,
        kv_mask_BxT=mask if mask.ndim == 2 else None,
        mask_BxLxT=mask if mask.ndim == 3 else None, deterministic=deterministic)
    out_BxLxNxH = constrain(out_BxLxNxH, ("batch", "length", "heads", "kv"))
    return dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), "out",
                 axis=(-2, -1))(out_BxLxNxH), qkv_BxLx3xNxH


class EncoderLayer(nn.Module):
  """Post-LN block: x = LN(x + Drop(Attn(x))); x = LN(x + Drop(FFN(x))).

  `collect`: also emit the block's output as the scan's per-layer output (stacked by
  `Encoder`); `keep_qkv`: the carry is (x, qkv) and each block overwrites qkv with its own
  query/key/value, so after the scan it holds the last layer's (one layer's worth of memory,
  not a stack). Both off by default, so the usual path carries and stacks nothing."""

  config: BertConfig
  collect: bool = False
  keep_qkv: bool = False

  @nn.compact
  def __call__(self, carry, mask_BxL, deterministic: bool):
    cfg = self.config
    x_BxLxD = carry[0] if self.keep_qkv else carry
    attn_BxLxD, qkv_BxLx3xNxH = SelfAttention(cfg, name="attention")(x_BxLxD, mask_BxL,
                                                                       deterministic)
    attn_BxLxD = nn.Dropout(cfg.hidden_dropout)(attn_BxLxD, deterministic=deterministic)
    x_BxLxD = layer_norm(cfg, "attention_norm")(x_BxLxD + attn_BxLxD)
    h_BxLxF = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "intermediate")(x_BxLxD)
    h_BxLxF = constrain(activation(cfg.hidden_act)(h_BxLxF), ("batch", "length", "mlp"))
    h_BxLxD = dense(cfg, cfg.hidden_size, ("mlp", "embed"), "output")(h_BxLxF)
    h_BxLxD = nn.Dropout(cfg.hidden_dropout)(h_BxLxD, deterministic=deterministic)
    x_BxLxD = layer_norm(cfg, "output_norm")(x_BxLxD + h_BxLxD)
    x_BxLxD = constrain(x_BxLxD.astype(cfg.dtype), ("batch", "length", "embed"))
    carry = (x_BxLxD, qkv_BxLx3xNxH) if self.keep_qkv else x_BxLxD
    return carry, (x_BxLxD if self.collect else None)


class Encoder(nn.Module):
  """`num_layers` EncoderLayers under `nn.scan`: one compiled body, parameters stacked on a
  leading 'layers' axis, optional rematerialisation of each layer.

  Returns the last layer's output; with `all_layers` or `last_qkv`, (last, every layer's output
  num_layers x B x L x D or None, the last layer's query/key/value B x L x 3 x N x H or None).
  """

  config: BertConfig

  @nn.compact
  def __call__(self, x_BxLxD, mask_BxL, deterministic: bool, all_layers: bool = False,
               last_qkv: bool = False):
    cfg = self.config
    layer = EncoderLayer
    if cfg.remat:
      layer = nn.remat(layer, prevent_cse=False, static_argnums=(3,))
    stack = nn.scan(layer, variable_axes={"params": 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                    metadata_params={nn.PARTITION_NAME: "layers"})
    carry = x_BxLxD
    if last_qkv:
      carry = (x_BxLxD, jnp.zeros(x_BxLxD.shape[:2] + (3, cfg.num_heads, cfg.head_dim),
                                  cfg.dtype))
    carry, layers_NxBxLxD = stack(cfg, all_layers, last_qkv, name="layers")(carry, mask_BxL,
                                                                            deterministic)
    if not (all_layers or last_qkv):
      return carry
    x_BxLxD, qkv_BxLx3xNxH = carry if last_qkv else (carry, None)
    return x_BxLxD, layers_NxBxLxD, qkv_BxLx3xNxH


class Pooler(nn.Module):
  """tanh(Dense) of the [CLS] vector: B x D, or B x E x D at `cls_positions_BxE` (the first
  token of each example of a packed row)."""

  config: BertConfig

  @nn.compact
  def __call__(self, x_BxLxD, cls_positions_BxE=None):
    cfg = self.config
    if cls_positions_BxE is None:
      cls = x_BxLxD[:, 0]
    else:
      cls = jnp.take_along_axis(x_BxLxD, cls_positions_BxE[..., None].astype(jnp.int32), axis=1)
    return jnp.tanh(dense(cfg, cfg.hidden_size, ("embed", "mlp"), "dense")(cls))


class BertModel(nn.Module):
  """Encoder + pooler. Returns (sequence output B x L x D, pooled B x D) in compute dtype;
  with `all_layers` also every hidden state, (num_layers + 1) x B x L x D: the embeddings'
  output then each layer's, as transformers' `hidden_states` (so index -1 is the last layer
  and BERT's extract_features layer numbers -1, -2, ... mean the same)."""

  config: BertConfig

  def setup(self):
    self.embeddings = Embeddings(self.config)
    self.encoder = Encoder(self.config)
    self.pooler = Pooler(self.config)

  def __call__(self, input_ids_BxL, segment_ids_BxL=None, input_mask_BxL=None,
               position_ids_BxL=None, deterministic: bool = True, packed: bool = False,
               cls_positions_BxE=None, all_layers: bool = False):
    """packed: `input_mask_BxL` holds each token's example number within its row (0 for
    padding) and attention stays within an example; pass each example's `position_ids` and
    its [CLS] positions for the pooled vectors (B x E x D)."""
    if segment_ids_BxL is None:
      segment_ids_BxL = jnp.zeros_like(input_ids_BxL)
    if input_mask_BxL is None:
      input_mask_BxL = jnp.ones_like(input_ids_BxL)
    if position_ids_BxL is None:
      position_ids_BxL = jnp.broadcast_to(jnp.arange(input_ids_BxL.shape[1]),
                                          input_ids_BxL.shape)
    x_BxLxD = self.embeddings(input_ids_BxL, segment_ids_BxL, position_ids_BxL, deterministic)
    mask = attention_lib.pair_mask(input_mask_BxL) if packed else input_mask_BxL
    # A trace-time decision: only a caller that asks for the sown outputs gets the extra work.
    distill = self.is_mutable_collection("intermediates") and not self.is_initializing()
    if not (all_layers or distill):
      x_BxLxD = self.encoder(x_BxLxD, mask, deterministic)
      return x_BxLxD, self.pooler(x_BxLxD, cls_positions_BxE)
    embedded_BxLxD = x_BxLxD   # K = num_layers + 1 hidden states: this, then each layer's
    x_BxLxD, layers_NxBxLxD, qkv_BxLx3xNxH = self.encoder(x_BxLxD, mask, deterministic,
                                                          all_layers=True, last_qkv=distill)
    hidden_KxBxLxD = jnp.concatenate([embedded_BxLxD[None], layers_NxBxLxD])
    if distill:
      self._sow_distill_outputs(hidden_KxBxLxD, qkv_BxLx3xNxH)
    pooled = self.pooler(x_BxLxD, cls_positions_BxE)
    return (x_BxLxD, pooled, hidden_KxBxLxD) if all_layers else (x_BxLxD, pooled)

  def _sow_distill_outputs(self, hidden_KxBxLxD, qkv_BxLx3xNxH):
    keep_last = dict(init_fn=lambda: None, reduce_fn=lambda _, new: new)
    self.sow("intermediates", "hidden_states",
             constrain(hidden_KxBxLxD, ("layers", "batch", "length", "embed")), **keep_last)
    qkv_BxLx3xNxH = constrain(qkv_BxLx3xNxH, ("batch", "length", None, "heads", "kv"))
    self.sow("intermediates", "last_attention",
             {name: qkv_BxLx3xNxH[:, :, i] for i, name in enumerate(QKV_NAMES)}, **keep_last)

  def word_table(self):
    return self.embeddings.word_table()


def sown_distill_outputs(intermediates):
  """(hidden states (num_layers + 1) x B x L x D, {"query", "key", "value"}: the last layer's
  self-attention inputs, each B x L x N x H), both in compute dtype, from the "intermediates"
  collection of a model applied with it mutable. Every head model keeps its encoder under
  "bert"; a bare `BertModel` applied directly sows at the top level."""
  sown = intermediates.get("bert", intermediates)
  return sown["hidden_states"], sown["last_attention"]
