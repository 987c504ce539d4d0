"""The function a serving export lowers: BERT inference over flat parameters, float or int8.

`make_serving_function(config, head, ...)` returns f(params, input_ids, segment_ids,
input_mask) -> {output name: float32 array} computing what the head's Linen model computes
(flaxbert.models.heads; tests/test_serving.py holds the two equal on every head), written as
plain jax over the flat parameter dict that params.npz stores:

- inference only, layers unrolled: the Linen encoder is an `nn.scan` (a while loop that
  dynamic-slices each layer's parameters out of the stacked arrays on every call); here each
  layer's parameters are separate inputs ("bert/encoder/layers/3/attention/qkv/kernel", see
  `unstack_layers`), so XLA sees six straight-line layers and fuses across them.
- int8 where the parameters say so: a kernel with a ":scale" sibling (flaxbert.inference.
  quantize) is an int8 matmul. The activation entering it is quantized on the fly, symmetric
  per token (scale = max|x| over the contracted axes / 127), the product is
  `dot_general(int8, int8) -> int32`, then rescaled by the token's scale times the kernel's
  per-output-channel scale, plus the float bias. An int8 embedding table has one scale per
  row: rows are gathered as int8, then scaled. The tied MLM decoder (pretraining head) is an
  int8 matmul against the int8 word table, its row scales being the decoder's per-output
  scales. Attention's own matmuls (q.k, probs.v), LayerNorm, GELU and softmax stay float.

Only jax here: the exported module carries the whole computation, and `load` never imports
this file.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from flaxbert.errors import FlaxbertError
from flaxbert.inference.quantize import INT8_MAX, SCALE_SUFFIX
from flaxbert.models import attention as attention_lib

LAYERS = "bert/encoder/layers/"
_STACKED = re.compile(re.escape(LAYERS) + r"(?!\d+/)")

# Output dict of each head, as its Linen model returns it.
OUTPUTS = {"encoder": ("hidden", "pooled"), "pretraining": ("mlm_logits", "nsp_logits"),
           "classification": ("logits",), "regression": ("logits",), "tagging": ("logits",),
           "span_qa": ("start_logits", "end_logits")}


def unstack_layers(flat: dict, num_layers: int) -> dict:
  """Stacked encoder parameters ("bert/encoder/layers/qkv/kernel", leading layer axis) as one
  entry per layer ("bert/encoder/layers/0/qkv/kernel"); everything else unchanged."""
  out = {}
  for path, value in flat.items():
    if _STACKED.match(path):
      rest = path[len(LAYERS):]
      for i in range(num_layers):
        out[f"{LAYERS}{i}/{rest}"] = value[i]
    else:
      out[path] = value
  return out


def _activation(name: str):
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name in ("gelu_new", "gelu_pytorch_tanh"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  return jax.nn.relu


def quantize_activation(x, num_in: int):
  """Symmetric int8 per token over the last `num_in` axes: (int8 x, float32 scale with those
  axes kept as 1)."""
  axes = tuple(range(x.ndim - num_in, x.ndim))
  x = x.astype(jnp.float32)
  scale = jnp.max(jnp.abs(x), axis=axes, keepdims=True) / INT8_MAX
  scale = jnp.where(scale > 0, scale, 1.0)    # an all-zero row stays 0
  return jnp.clip(jnp.round(x / scale), -INT8_MAX, INT8_MAX).astype(jnp.int8), scale


class _Forward:
  """The computation for one config, head and compute dtype, over one flat parameter dict."""

  def __init__(self, config, head: str, dtype: str, all_layers: bool):
    self.config, self.head, self.dtype, self.all_layers = config, head, dtype, all_layers
    self.act = _activation(config.hidden_act)

  def dense(self, p, prefix: str, x, num_in: int = 1):
    """x @ kernel + bias over the last `num_in` axes of x (the kernel's leading axes)."""
    kernel, bias = p[prefix + "/kernel"], p[prefix + "/bias"]
    contract = (tuple(range(x.ndim - num_in, x.ndim)), tuple(range(num_in)))
    scale = p.get(prefix + "/kernel" + SCALE_SUFFIX)
    if scale is None:
      y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                              (contract, ((), ())))
      return y + bias.astype(self.dtype)
    xq, x_scale = quantize_activation(x, num_in)
    acc = jax.lax.dot_general(xq, kernel, (contract, ((), ())),
                              preferred_element_type=jnp.int32)
    # x_scale: [..., 1 * num_in] -> [..., 1 * outputs]; the kernel's scale: [1 * num_in, outs].
    x_scale = x_scale.reshape(x_scale.shape[:x.ndim - num_in] + (1,) * (kernel.ndim - num_in))
    w_scale = scale.reshape(scale.shape[num_in:])
    y = acc.astype(jnp.float32) * (x_scale * w_scale) + bias
    return y.astype(self.dtype)

  def embed(self, p, prefix: str, ids):
    table = p[prefix + "/embedding"]
    rows = jnp.take(table, ids, axis=0)
    scale = p.get(prefix + "/embedding" + SCALE_SUFFIX)
    if scale is None:
      return rows.astype(jnp.float32)
    return rows.astype(jnp.float32) * jnp.take(scale, ids, axis=0)

  def layer_norm(self, p, prefix: str, x):
    # As flax.linen.LayerNorm(use_fast_variance=False): float32 two-pass statistics.
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    mul = jax.lax.rsqrt(var + self.config.layer_norm_eps) * p[prefix + "/scale"]
    return ((x - mean) * mul + p[prefix + "/bias"]).astype(self.dtype)

  def encoder_layer(self, p, prefix: str, x, mask):
    cfg = self.config
    b, s = x.shape[:2]
    qkv = self.dense(p, prefix + "attention/qkv", x)
    qkv = qkv.reshape(b, s, 3, cfg.num_heads, cfg.head_dim)
    out = attention_lib.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], kv_mask_BxT=mask,
                                  implementation="xla")
    attn = self.dense(p, prefix + "attention/out", out, num_in=2)
    x = self.layer_norm(p, prefix + "attention_norm", x + attn)
    h = self.act(self.dense(p, prefix + "intermediate", x))
    return self.layer_norm(p, prefix + "output_norm", x + self.dense(p, prefix + "output", h))

  def bert(self, p, input_ids, segment_ids, input_mask):
    """(sequence output, pooled, every hidden state or None)."""
    positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    x = (self.embed(p, "bert/embeddings/word_embeddings", input_ids)
         + self.embed(p, "bert/embeddings/position_embeddings", positions)
         + self.embed(p, "bert/embeddings/token_type_embeddings", segment_ids))
    x = self.layer_norm(p, "bert/embeddings/layer_norm", x)
    hidden = [x]
    for i in range(self.config.num_layers):
      x = self.encoder_layer(p, f"{LAYERS}{i}/", x, input_mask)
      hidden.append(x)
    pooled = jnp.tanh(self.dense(p, "bert/pooler/dense", x[:, 0]))
    return x, pooled, (jnp.stack(hidden) if self.all_layers else None)

  def mlm_logits(self, p, x):
    h = self.act(self.dense(p, "mlm/transform", x))
    h = self.layer_norm(p, "mlm/transform_norm", h)
    table = p["bert/embeddings/word_embeddings/embedding"]
    scale = p.get("bert/embeddings/word_embeddings/embedding" + SCALE_SUFFIX)
    if scale is None:
      logits = jnp.einsum("bpd,vd->bpv", h.astype(self.dtype), table.astype(self.dtype),
                          preferred_element_type=jnp.float32)
    else:
      hq, h_scale = quantize_activation(h, 1)
      acc = jnp.einsum("bpd,vd->bpv", hq, table, preferred_element_type=jnp.int32)
      logits = acc.astype(jnp.float32) * (h_scale * scale[:, 0])
    return logits + p["mlm/output_bias"]

  def __call__(self, p, input_ids, segment_ids, input_mask):
    seq, pooled, hidden = self.bert(p, input_ids, segment_ids, input_mask)
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    if self.head == "encoder":
      out = {"hidden": f32(seq), "pooled": f32(pooled)}
      if hidden is not None:
        out["all_hidden"] = f32(hidden)
      return out
    if self.head == "pretraining":
      return {"mlm_logits": self.mlm_logits(p, seq),
              "nsp_logits": f32(self.dense(p, "nsp/dense", pooled))}
    if self.head in ("classification", "regression"):
      return {"logits": f32(self.dense(p, "classifier/dense", pooled))}
    if self.head == "tagging":
      return {"logits": f32(self.dense(p, "classifier/dense", seq))}
    logits = f32(self.dense(p, "qa_outputs/dense", seq))
    return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}


def make_serving_function(config, head: str, dtype: str = "float32", all_layers: bool = False):
  """f(params, input_ids, segment_ids, input_mask) -> outputs, for parameters in the flat,
  per-layer form of `unstack_layers` (optionally quantized by flaxbert.inference.quantize)."""
  if head not in OUTPUTS:
    raise FlaxbertError(f"no serving function for head {head!r}")
  return _Forward(config, head, dtype, all_layers)
