"""The encoder and heads on tiny configs: golden shapes, logical axes, masking, dtypes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxbert.models import attention as attention_lib
from flaxbert.models.config import BertConfig
from flaxbert.models.factory import HEADS, build_model, init_params

CONFIG = BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                    intermediate_size=64, max_position_embeddings=32)
B, L = 3, 16


def inputs(seed=0, vocab=100):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, vocab, (B, L)).astype(np.int32)
  mask = np.ones((B, L), np.int32)
  mask[1, 10:] = 0
  mask[2, 4:] = 0
  ids = ids * mask
  segments = (np.arange(L)[None] >= 6).astype(np.int32) * mask
  return jnp.asarray(ids), jnp.asarray(segments), jnp.asarray(mask)


GOLDEN = {
    "encoder": {"hidden": (B, L, 32), "pooled": (B, 32)},
    "pretraining": {"mlm_logits": (B, L, 100), "nsp_logits": (B, 2)},
    "classification": {"logits": (B, 5)},
    "regression": {"logits": (B, 1)},
    "tagging": {"logits": (B, L, 5)},
    "span_qa": {"start_logits": (B, L), "end_logits": (B, L)},
}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_golden_shapes_and_float32_outputs(head):
  model = build_model(CONFIG.replace(dtype="bfloat16"), head, num_labels=5)
  params = init_params(model, jax.random.key(0))
  out = model.apply({"params": params}, *inputs())
  assert {k: v.shape for k, v in out.items()} == GOLDEN[head]
  assert all(v.dtype == jnp.float32 for v in out.values())
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_mlm_logits_only_at_masked_positions_equal_full_logits():
  model = build_model(CONFIG, "pretraining")
  params = init_params(model, jax.random.key(1))
  positions = jnp.array([[1, 3, 0], [2, 2, 9], [0, 1, 3]], jnp.int32)
  full = model.apply({"params": params}, *inputs())["mlm_logits"]
  picked = model.apply({"params": params}, *inputs(), masked_positions=positions)["mlm_logits"]
  assert picked.shape == (B, 3, 100)
  np.testing.assert_allclose(picked, np.take_along_axis(np.asarray(full),
                                                        np.asarray(positions)[..., None], 1),
                             atol=1e-5)


def test_every_parameter_has_logical_axis_names_of_its_rank():
  for head in HEADS:
    model = build_model(CONFIG, head, num_labels=5)
    boxed = jax.eval_shape(lambda: init_params(model, jax.random.key(0), boxed=True))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves), head
    for leaf in leaves:
      assert len(leaf.names) == len(leaf.value.shape), leaf
    names = {n for leaf in leaves for n in leaf.names}
    assert names <= {"vocab", "embed", "heads", "kv", "mlp", "layers", None}
  # Scanned layers: the stacked axis is named 'layers'.
  stacked = boxed["bert"]["encoder"]["layers"]["attention"]["qkv"]["kernel"]
  assert stacked.names == ("layers", "embed", None, "heads", "kv")


def test_padding_does_not_change_real_tokens():
  model = build_model(CONFIG, "encoder")
  params = init_params(model, jax.random.key(2))
  ids, segments, mask = inputs()
  short = model.apply({"params": params}, ids[:, :10], segments[:, :10], mask[:, :10])
  # Row 1 has exactly 10 real tokens; pad it differently and compare its real positions.
  long = model.apply({"params": params}, ids.at[1, 10:].set(77), segments, mask)
  np.testing.assert_allclose(long["hidden"][1, :10], short["hidden"][1, :10], atol=1e-5)
  np.testing.assert_allclose(long["pooled"][1], short["pooled"][1], atol=1e-5)


def test_bfloat16_compute_tracks_float32():
  model32 = build_model(CONFIG, "encoder")
  params = init_params(model32, jax.random.key(3))
  out32 = model32.apply({"params": params}, *inputs())["hidden"]
  out16 = build_model(CONFIG.replace(dtype="bfloat16"), "encoder").apply(
      {"params": params}, *inputs())["hidden"]
  mask = np.asarray(inputs()[2])[..., None]
  err = np.abs((np.asarray(out32) - np.asarray(out16)) * mask).max()
  assert 0 < err < 0.1, err  # bf16 really used, and still close (LayerNorm keeps it O(1))


def test_dropout_only_when_not_deterministic():
  model = build_model(CONFIG, "encoder")
  params = init_params(model, jax.random.key(4))
  run = lambda det, seed: model.apply({"params": params}, *inputs(), deterministic=det,
                                      rngs={"dropout": jax.random.key(seed)})["hidden"]
  np.testing.assert_array_equal(run(True, 0), run(True, 1))
  assert not np.allclose(run(False, 0), run(False, 1))
  np.testing.assert_array_equal(run(False, 5), run(False, 5))


def test_attention_paths_agree_with_a_reference():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 5, 3, 8)), jnp.float32) for _ in range(3))
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  logits = np.einsum("blnh,btnh->bnlt", q, k) / np.sqrt(8)
  logits = np.where(np.asarray(mask)[:, None, None, :] > 0, logits, -1e30)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  want = np.einsum("bnlt,btnh->blnh", probs, v)
  fast = attention_lib.attention(q, k, v, kv_mask_BxT=mask, implementation="xla")
  np.testing.assert_allclose(fast, want, atol=1e-5)
  # The dropout path at a vanishing rate is the same computation.
  slow = attention_lib.attention(q, k, v, kv_mask_BxT=mask, dropout_rate=1e-9,
                                 dropout_rng=jax.random.key(0))
  np.testing.assert_allclose(slow, want, atol=1e-5)
  causal = attention_lib.attention(q, k, v, causal=True, implementation="xla")
  slow_causal = attention_lib.attention(q, k, v, causal=True, dropout_rate=1e-9,
                                        dropout_rng=jax.random.key(0))
  np.testing.assert_allclose(causal, slow_causal, atol=1e-5)


def test_cudnn_request_off_gpu_is_a_clear_error():
  from flaxbert import FlaxbertError
  if jax.default_backend() == "gpu":
    assert attention_lib.choose_implementation("cudnn", jnp.bfloat16, 64) == "cudnn"
  else:
    assert attention_lib.choose_implementation("auto", jnp.bfloat16, 64) == "xla"
    with pytest.raises(FlaxbertError, match="cudnn"):
      attention_lib.choose_implementation("cudnn", jnp.bfloat16, 64)


def test_remat_gives_the_same_gradients():
  def grads(remat):
    model = build_model(CONFIG.replace(remat=remat), "pretraining")
    params = init_params(model, jax.random.key(5))
    loss = lambda p: model.apply({"params": p}, *inputs())["mlm_logits"].mean()
    return jax.grad(loss)(params)
  for a, b in zip(jax.tree.leaves(grads(False)), jax.tree.leaves(grads(True))):
    np.testing.assert_allclose(a, b, atol=1e-6)
