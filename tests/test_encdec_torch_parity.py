"""The encoder-decoder computes what torch's nn.TransformerEncoder/DecoderLayer stacks compute
with the same weights (post-LN and pre-LN, padded sources, causal decoder, tied sqrt(d)-scaled
embeddings, sinusoidal positions): the reference bench/seq2seq_vs_reference.py trains against."""

import jax
import numpy as np
import pytest
import torch
from torch import nn

from flaxbert.models.encdec import EncDecModel, init_params, shift_right, sinusoidal_positions
from flaxbert.models.encdec_config import get_config

VOCAB = 40   # the shapes of test_encdec_model.py, whose compiled ops this reuses


def _t(x):
  return torch.from_numpy(np.array(x, np.float32))


def _copy_attention(attention: nn.MultiheadAttention, p, d: int):
  attention.in_proj_weight.copy_(torch.cat([_t(p[n]["kernel"]).reshape(d, d).T
                                            for n in ("query", "key", "value")]))
  attention.in_proj_bias.copy_(torch.cat([_t(p[n]["bias"]).reshape(d)
                                          for n in ("query", "key", "value")]))
  attention.out_proj.weight.copy_(_t(p["out"]["kernel"]).reshape(d, d).T)
  attention.out_proj.bias.copy_(_t(p["out"]["bias"]))


def _copy_norm(norm: nn.LayerNorm, p):
  norm.weight.copy_(_t(p["norm"]["scale"]))
  norm.bias.copy_(_t(p["norm"]["bias"]))


def _copy_ffn(layer, p):
  layer.linear1.weight.copy_(_t(p["intermediate"]["kernel"]).T)
  layer.linear1.bias.copy_(_t(p["intermediate"]["bias"]))
  layer.linear2.weight.copy_(_t(p["output"]["kernel"]).T)
  layer.linear2.bias.copy_(_t(p["output"]["bias"]))


def _torch_logits(cfg, params, src, src_mask, tgt_in):
  d = cfg.hidden_size
  kw = dict(d_model=d, nhead=cfg.num_heads, dim_feedforward=cfg.intermediate_size, dropout=0.0,
            layer_norm_eps=cfg.layer_norm_eps, batch_first=True, norm_first=cfg.pre_ln)
  with torch.no_grad():
    embed = _t(params["source_embed"]["embedding"])

    def embedded(ids):
      pe = _t(sinusoidal_positions(np.arange(ids.shape[1])[None], d))
      return embed[torch.from_numpy(np.asarray(ids, np.int64))] * d ** 0.5 + pe

    pad = torch.from_numpy(np.asarray(src_mask) == 0)
    x = embedded(src)
    for i in range(cfg.num_encoder_layers):
      layer, p = nn.TransformerEncoderLayer(**kw).eval(), params[f"encoder_{i}"]
      _copy_attention(layer.self_attn, p["self_attention"], d)
      _copy_norm(layer.norm1, p["attention_block"])
      _copy_ffn(layer, p["ffn"])
      _copy_norm(layer.norm2, p["ffn_block"])
      x = layer(x, src_key_padding_mask=pad)
    if cfg.pre_ln:
      x = nn.functional.layer_norm(x, (d,), _t(params["encoder_norm"]["scale"]),
                                   _t(params["encoder_norm"]["bias"]), cfg.layer_norm_eps)
    y = embedded(tgt_in)
    causal = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1])
    for i in range(cfg.num_decoder_layers):
      layer, p = nn.TransformerDecoderLayer(**kw).eval(), params[f"decoder_{i}"]
      _copy_attention(layer.self_attn, p["self_attention"], d)
      _copy_norm(layer.norm1, p["self_attention_block"])
      _copy_attention(layer.multihead_attn, p["cross_attention"], d)
      _copy_norm(layer.norm2, p["cross_attention_block"])
      _copy_ffn(layer, p["ffn"])
      _copy_norm(layer.norm3, p["ffn_block"])
      y = layer(y, x, tgt_mask=causal, memory_key_padding_mask=pad)
    if cfg.pre_ln:
      y = nn.functional.layer_norm(y, (d,), _t(params["decoder_norm"]["scale"]),
                                   _t(params["decoder_norm"]["bias"]), cfg.layer_norm_eps)
    return (y @ embed.T).numpy()


@pytest.mark.parametrize("pre_ln", [False, True])
def test_logits_equal_torch_transformer_layers_with_the_same_weights(pre_ln):
  cfg = get_config("tiny", vocab_size=VOCAB, pre_ln=pre_ln)
  model = EncDecModel(cfg)
  params = init_params(model, jax.random.key(0))
  # LayerNorm scales and biases away from 1 and 0, so a swapped norm would show.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.3 * jax.random.normal(jax.random.key(len(str(path))), x.shape)
      if path[-1].key in ("scale", "bias") else x, params)
  rng = np.random.default_rng(0)
  src = rng.integers(4, VOCAB, (3, 7)).astype(np.int32)
  src_mask = (np.arange(7)[None] < np.array([[7], [4], [2]])).astype(np.int32)
  src = src * src_mask
  tgt_in = np.asarray(shift_right(rng.integers(4, VOCAB, (3, 6)).astype(np.int32),
                                  cfg.decoder_start_id))
  ours = np.asarray(model.apply({"params": params}, src, src_mask, tgt_in)["logits"])
  theirs = _torch_logits(cfg, params, src, src_mask, tgt_in)
  np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=2e-4)
