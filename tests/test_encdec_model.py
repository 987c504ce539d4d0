"""The encoder-decoder model: cached incremental decoding equals full recomputation, the decoder
is causal, teacher-forcing inputs, sharding names, and the span-corruption transform."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxbert.data import span_corruption
from flaxbert.models.encdec import (EncDecModel, init_cache, init_params, shift_right,
                                    sinusoidal_positions)
from flaxbert.models.encdec_config import PRESETS, get_config

VOCAB = 40


def _model(**overrides):
  cfg = get_config("tiny", vocab_size=VOCAB, hidden_dropout=0.0, **overrides)
  model = EncDecModel(cfg)
  return model, init_params(model, jax.random.key(0))


def _inputs(batch=3, source=7, target=6):
  src = jax.random.randint(jax.random.key(1), (batch, source), 4, VOCAB)
  mask = (jnp.arange(source)[None] < jnp.array([source, 4, 2])[:batch, None]).astype(jnp.int32)
  tgt = jax.random.randint(jax.random.key(2), (batch, target), 4, VOCAB)
  return src * mask, mask, tgt


@pytest.mark.parametrize("overrides", [{}, {"pre_ln": True}, {"share_embeddings": False,
                                                              "tie_output": False}])
def test_cached_decoding_matches_full_recomputation_at_every_step(overrides):
  model, params = _model(**overrides)
  src, mask, tgt = _inputs()
  full = model.apply({"params": params}, src, mask, tgt)["logits"]
  encoded = model.apply({"params": params}, src, mask, method=EncDecModel.encode)
  cache = init_cache(model, params, encoded, mask, max_length=tgt.shape[1])
  for t in range(tgt.shape[1]):
    step, variables = model.apply({"params": params, "cache": cache}, tgt[:, t:t + 1], encoded,
                                  mask, decode=True, method=EncDecModel.decode,
                                  mutable=["cache"])
    cache = variables["cache"]
    np.testing.assert_allclose(step[:, 0], full[:, t], atol=2e-5, rtol=1e-5)


def test_changing_a_future_target_token_never_changes_earlier_logits():
  model, params = _model()
  src, mask, tgt = _inputs()
  base = model.apply({"params": params}, src, mask, tgt)["logits"]
  for t in range(1, tgt.shape[1]):
    changed = tgt.at[:, t].set((tgt[:, t] + 7) % VOCAB)
    out = model.apply({"params": params}, src, mask, changed)["logits"]
    np.testing.assert_array_equal(np.asarray(out[:, :t]), np.asarray(base[:, :t]))
    assert not np.allclose(out[:, t:], base[:, t:])


def test_source_padding_is_ignored():
  model, params = _model()
  src, mask, tgt = _inputs()
  noisy = jnp.where(mask == 1, src, 17)   # different ids under the padding
  a = model.apply({"params": params}, src, mask, tgt)["logits"]
  b = model.apply({"params": params}, noisy, mask, tgt)["logits"]
  np.testing.assert_allclose(a, b, atol=1e-6)


def test_shift_right_and_positions():
  ids = jnp.array([[5, 6, 7, 3], [8, 3, 0, 0]])
  np.testing.assert_array_equal(shift_right(ids, 2), [[2, 5, 6, 7], [2, 8, 3, 0]])
  pe = np.asarray(sinusoidal_positions(jnp.arange(4)[None], 8))[0]
  assert pe.shape == (4, 8)
  np.testing.assert_allclose(pe[:, 0], np.sin(np.arange(4)), atol=1e-6)
  np.testing.assert_allclose(pe[:, 1], np.cos(np.arange(4)), atol=1e-6)
  np.testing.assert_allclose(pe[:, 6], np.sin(np.arange(4) / 10000 ** (6 / 8)), atol=1e-6)


def test_presets_and_logical_names():
  base = PRESETS["transformer_base"]
  assert (base.num_encoder_layers, base.num_decoder_layers, base.hidden_size, base.num_heads,
          base.intermediate_size, base.pre_ln) == (6, 6, 512, 8, 2048, False)
  model = EncDecModel(get_config("tiny", vocab_size=VOCAB))
  boxed = init_params(model, jax.random.key(0), boxed=True)
  import flax.linen as nn
  specs = nn.get_partition_spec(boxed)
  assert tuple(specs["source_embed"]["embedding"]) == ("vocab", "embed")
  attn = specs["decoder_0"]["cross_attention"]
  assert tuple(attn["query"]["kernel"]) == ("embed", "heads", "kv")
  assert tuple(attn["out"]["kernel"]) == ("heads", "kv", "embed")
  assert tuple(specs["encoder_1"]["ffn"]["intermediate"]["kernel"]) == ("embed", "mlp")
  assert "target_embed" not in specs and "output" not in specs   # shared and tied


def test_kernels_start_at_glorot_std_for_their_fans_unless_a_std_is_set():
  """nn.Transformer's (and the flax WMT example's) Xavier init, per kernel shape."""
  _, params = _model(share_embeddings=False, tie_output=False)   # tiny: 64 wide, FFN 256
  expected = {("ffn", "intermediate"): (2 / (64 + 256)) ** 0.5,
              ("ffn", "output"): (2 / (256 + 64)) ** 0.5,
              ("self_attention", "query"): (2 / 128) ** 0.5,
              ("cross_attention", "out"): (2 / 128) ** 0.5}
  for (block, name), std in expected.items():
    kernel = np.asarray(params["decoder_1"][block][name]["kernel"])
    assert abs(kernel.std() / std - 1) < 0.08, (block, name, kernel.std(), std)
  assert abs(np.asarray(params["output"]["kernel"]).std() / (2 / (64 + VOCAB)) ** 0.5 - 1) < 0.08
  assert abs(np.asarray(params["target_embed"]["embedding"]).std() * 64 ** 0.5 - 1) < 0.08
  _, fixed = _model(initializer_range=0.3)
  assert abs(np.asarray(fixed["encoder_0"]["ffn"]["output"]["kernel"]).std() / 0.3 - 1) < 0.05


def test_span_corruption_round_trips():
  ids = np.arange(100, 140, dtype=np.int32)
  words = np.random.default_rng(0).integers(0, 2**63, 80, dtype=np.uint64)
  source, target = span_corruption.corrupt(ids, words, first_sentinel=500, eos_id=3)
  noise, spans = span_corruption.span_counts(len(ids))
  assert (len(source), len(target)) == span_corruption.corrupted_lengths(len(ids))
  assert source[-1] == 3 and target[-1] == 3
  assert sorted(t for t in source if t >= 500) == list(range(500, 500 + spans))
  # Filling each sentinel with its span from the target gives back the chunk.
  pieces, current = {}, None
  for t in target[:-1]:
    if t >= 500:
      current = t
      pieces[t] = []
    else:
      pieces[current].append(t)
  rebuilt = [x for t in source[:-1] for x in (pieces[t] if t >= 500 else [t])]
  np.testing.assert_array_equal(rebuilt, ids)
  assert sum(len(p) for p in pieces.values()) == noise
  assert span_corruption.model_vocab_size(1000, 40) == 1024
