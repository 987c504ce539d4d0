"""Intermediate distillation losses against numpy references written from the papers'
formulas, and the model hooks that feed them (sown hidden states, last-layer q/k/v)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxbert.errors import FlaxbertError
from flaxbert.models.bert import sown_distill_outputs
from flaxbert.models.config import BertConfig
from flaxbert.models.factory import build_model, init_params
from flaxbert.training import distill_losses as dl

B, L = 3, 7
LENGTHS = (7, 4, 2)     # valid tokens per row; the rest is padding
MASK = jnp.asarray(np.arange(L)[None] < np.asarray(LENGTHS)[:, None], jnp.int32)

# The losses compiled whole: a few compilations instead of one per primitive and shape.
RELATION_OPTIONS = ("relations", "relation_heads", "packed")
minilm_loss = jax.jit(dl.minilm_loss, static_argnames=RELATION_OPTIONS)
attention_distribution_loss = jax.jit(dl.attention_distribution_loss,
                                      static_argnames=RELATION_OPTIONS[1:])
value_relation_loss = jax.jit(dl.value_relation_loss, static_argnames=RELATION_OPTIONS[1:])
hidden_state_loss = jax.jit(dl.hidden_state_loss, static_argnames=("layer_map", "project"))


def normal(rng, *shape):
  return jnp.asarray(rng.normal(size=shape), jnp.float32)


def attention_dict(rng, heads, head_dim):
  return {name: normal(rng, B, L, heads, head_dim) for name in ("query", "key", "value")}


# --- numpy references, one example at a time over its valid tokens only --------------------

def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_hidden_loss(student, teacher, layer_map, kernel=None, bias=None):
  """TinyBERT: sum over pairs of MSE(H^S W + b, H^T) over the valid tokens of the batch."""
  total = 0.0
  for s, t in layer_map:
    hs = np.concatenate([np.asarray(student[s][b, :n]) for b, n in enumerate(LENGTHS)])
    ht = np.concatenate([np.asarray(teacher[t][b, :n]) for b, n in enumerate(LENGTHS)])
    if kernel is not None:
      hs = hs @ np.asarray(kernel) + np.asarray(bias)
    total += np.mean((hs - ht) ** 2)
  return total


def np_relation_kl(s_a, s_b, t_a, t_b, relation_heads=None):
  """MiniLM: 1/(A_h |x|) sum_a sum_t KL(softmax(a_T b_T^T / sqrt d) || same for S)."""
  def regroup(x):
    x = np.asarray(x)
    if relation_heads is None:
      return x
    return x.reshape(x.shape[0], relation_heads, -1)
  total, tokens = 0.0, 0
  for b, n in enumerate(LENGTHS):
    maps = []
    for a_, b_ in ((t_a, t_b), (s_a, s_b)):
      x, y = regroup(a_[b, :n]), regroup(b_[b, :n])      # n x heads x d
      maps.append(np_softmax(np.einsum("lnh,tnh->nlt", x, y) / np.sqrt(x.shape[-1])))
    p, q = maps
    heads = p.shape[0]
    total += np.sum(p * (np.log(p) - np.log(q)))
    tokens += n
  return total / (heads * tokens)


# --- the losses against the references -------------------------------------------------------

def test_uniform_layer_map_is_tinyberts():
  assert dl.uniform_layer_map(3, 12) == ((0, 0), (1, 4), (2, 8), (3, 12))
  assert dl.uniform_layer_map(2, 6) == ((0, 0), (1, 3), (2, 6))
  assert dl.uniform_layer_map(4, 6)[-1] == (4, 6)


def test_hidden_state_loss_matches_tinybert_with_a_projection():
  rng = np.random.default_rng(0)
  student, teacher = normal(rng, 3, B, L, 6), normal(rng, 5, B, L, 10)
  layer_map = dl.uniform_layer_map(2, 4)
  projection = dl.HiddenProjection(10)
  boxed = projection.init(jax.random.key(0), student[0])["params"]
  assert boxed["kernel"].names == ("embed", "mlp") and boxed["bias"].names == ("mlp",)
  assert jax.tree.map(jnp.shape, nn.meta.unbox(boxed)) == {"kernel": (6, 10), "bias": (10,)}
  params = {"kernel": normal(rng, 6, 10), "bias": normal(rng, 10)}   # non-trivial W and b
  project = lambda h: projection.apply({"params": params}, h)
  got = hidden_state_loss(student, teacher, MASK, layer_map, project)
  want = np_hidden_loss(student, teacher, layer_map, params["kernel"], params["bias"])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Equal widths: no projection at all, no parameters.
  assert dl.HiddenProjection(6).init(jax.random.key(0), student[0]) == {}
  same_width = normal(rng, 5, B, L, 6)
  np.testing.assert_allclose(hidden_state_loss(student, same_width, MASK, layer_map),
                             np_hidden_loss(student, same_width, layer_map), rtol=1e-5)


@pytest.mark.parametrize("relation_heads", [None, 2])
def test_attention_and_value_relation_losses_match_minilm(relation_heads):
  rng = np.random.default_rng(1)
  student, teacher = attention_dict(rng, 4, 3), attention_dict(rng, 4, 5)
  at = attention_distribution_loss(student, teacher, MASK, relation_heads)
  vr = value_relation_loss(student, teacher, MASK, relation_heads)
  np.testing.assert_allclose(at, np_relation_kl(student["query"], student["key"],
                                                teacher["query"], teacher["key"],
                                                relation_heads), rtol=1e-4)
  np.testing.assert_allclose(vr, np_relation_kl(student["value"], student["value"],
                                                teacher["value"], teacher["value"],
                                                relation_heads), rtol=1e-4)
  np.testing.assert_allclose(minilm_loss(student, teacher, MASK, relation_heads=relation_heads),
                             at + vr, rtol=1e-5)
  assert at > 0 and vr > 0


def test_relation_heads_bridge_different_head_counts():
  rng = np.random.default_rng(2)
  student, teacher = attention_dict(rng, 2, 6), attention_dict(rng, 4, 6)   # widths 12, 24
  with pytest.raises(FlaxbertError, match="relation_heads"):
    minilm_loss(student, teacher, MASK)
  got = minilm_loss(student, teacher, MASK, dl.MINILMV2_RELATIONS, relation_heads=3)
  want = sum(np_relation_kl(student[a], student[b], teacher[a], teacher[b], 3)
             for a, b in (("query", "query"), ("key", "key"), ("value", "value")))
  np.testing.assert_allclose(got, want, rtol=1e-4)
  with pytest.raises(FlaxbertError, match="does not divide"):
    minilm_loss(student, teacher, MASK, relation_heads=5)


def test_padding_positions_do_not_change_the_losses():
  rng = np.random.default_rng(3)
  student, teacher = attention_dict(rng, 2, 4), attention_dict(rng, 2, 4)
  s_hidden, t_hidden = normal(rng, 2, B, L, 8), normal(rng, 3, B, L, 8)
  pad = (MASK == 0)
  scramble = lambda x, axis_pad: jnp.where(axis_pad, 1e3 * normal(rng, *x.shape), x)
  losses = lambda s, t, sh, th: (minilm_loss(s, t, MASK, dl.MINILMV2_RELATIONS + ("qk",)),
                                 hidden_state_loss(sh, th, MASK, ((0, 0), (1, 2))))
  before = losses(student, teacher, s_hidden, t_hidden)
  pad4 = pad[:, :, None, None]
  after = losses({k: scramble(v, pad4) for k, v in student.items()},
                 {k: scramble(v, pad4) for k, v in teacher.items()},
                 scramble(s_hidden, pad[None, :, :, None]),
                 scramble(t_hidden, pad[None, :, :, None]))
  np.testing.assert_allclose(after, before, rtol=1e-5)


def test_packed_rows_give_the_loss_of_their_examples_unpacked():
  rng = np.random.default_rng(6)
  # One row holding examples of 4 and 2 tokens (example numbers 1, 2; padding 0), and the same
  # two examples as rows of their own.
  segments = jnp.asarray([[1, 1, 1, 1, 2, 2, 0]])
  student, teacher = ({k: normal(rng, 1, L, 2, 4) for k in ("query", "key", "value")}
                      for _ in range(2))
  s_hidden, t_hidden = normal(rng, 2, 1, L, 8), normal(rng, 2, 1, L, 8)

  def unpack(row_Lx):   # the packed row's two examples as rows of their own, padded
    rows = np.zeros((2,) + row_Lx.shape, np.float32)
    rows[0, :4], rows[1, :2] = row_Lx[:4], row_Lx[4:6]
    return jnp.asarray(rows)

  mask = jnp.asarray([[1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]])
  relations = dl.MINILM_RELATIONS + ("qq",)
  packed = minilm_loss(student, teacher, segments, relations, packed=True)
  unpacked = minilm_loss({k: unpack(v[0]) for k, v in student.items()},
                            {k: unpack(v[0]) for k, v in teacher.items()}, mask, relations)
  np.testing.assert_allclose(packed, unpacked, rtol=1e-5)
  assert not np.isclose(packed, minilm_loss(student, teacher, segments > 0, relations))
  np.testing.assert_allclose(
      hidden_state_loss(s_hidden, t_hidden, segments, ((0, 0), (1, 1))),
      hidden_state_loss(jnp.stack([unpack(h[0]) for h in s_hidden]),
                           jnp.stack([unpack(h[0]) for h in t_hidden]), mask, ((0, 0), (1, 1))),
      rtol=1e-5)


def test_gradients_reach_the_student_and_projection_never_the_teacher():
  rng = np.random.default_rng(4)
  student, teacher = attention_dict(rng, 2, 4), attention_dict(rng, 2, 6)
  s_hidden, t_hidden = normal(rng, 2, B, L, 8), normal(rng, 3, B, L, 12)
  projection = dl.HiddenProjection(12)
  p_params = projection.init(jax.random.key(1), s_hidden[0])["params"]

  def loss(s_att, t_att, sh, th, pp):
    project = lambda h: projection.apply({"params": pp}, h)
    return (minilm_loss(s_att, t_att, MASK)
            + hidden_state_loss(sh, th, MASK, dl.uniform_layer_map(1, 2), project))

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(student, teacher, s_hidden,
                                                           t_hidden, p_params)
  g_student, g_teacher, g_sh, g_th, g_proj = grads
  for g in jax.tree.leaves((g_student, g_sh, g_proj)):
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
  for g in jax.tree.leaves((g_teacher, g_th)):
    assert np.abs(g).max() == 0


# --- through the model hooks ------------------------------------------------------------------

CONFIG = BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2,
                    intermediate_size=32, max_position_embeddings=16)


def ids():
  return jnp.asarray(np.random.default_rng(5).integers(5, 50, (B, L)), jnp.int32) * MASK


@pytest.fixture(scope="module")
def classifier():
  """A tiny classification model and a maker of random parameters of its shapes (compiling or
  eagerly running the model's own init takes seconds)."""
  model = build_model(CONFIG, "classification", 3)
  shapes = jax.eval_shape(lambda key: init_params(model, key), jax.random.key(0))
  def init(seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: normal(rng, *s.shape) * 0.2, shapes)
  return model, init


def sown(model, params):
  _, state = model.apply({"params": params}, ids(), None, MASK, mutable=["intermediates"])
  return sown_distill_outputs(state["intermediates"])


def test_sown_outputs_are_the_hidden_states_and_last_layer_qkv(classifier):
  model, init = classifier
  params = init(2)
  encoder = build_model(CONFIG, "encoder").clone(all_layers=True)
  remat = build_model(CONFIG.replace(remat=True), "classification", 3)

  @jax.jit   # one compilation for all the forward passes
  def forward(p):
    plain = model.apply({"params": p}, ids(), None, MASK)
    with_sown = model.apply({"params": p}, ids(), None, MASK, mutable=["intermediates"])[0]
    all_hidden = encoder.apply({"params": {"bert": p["bert"]}}, ids(), None, MASK)["all_hidden"]
    return sown(model, p), sown(remat, p), all_hidden, plain["logits"], with_sown["logits"]

  (hidden, attention), remat_sown, all_hidden, plain, with_sown = forward(params)
  # Rematerialised layers sow the same.
  for a, b in zip(jax.tree.leaves((hidden, attention)), jax.tree.leaves(remat_sown)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  # Every hidden state, as the explicit all_layers output gives them.
  np.testing.assert_allclose(hidden, all_hidden, atol=1e-6)
  # q, k, v: the last layer's fused projection of the layer before it.
  qkv = params["bert"]["encoder"]["layers"]["attention"]["qkv"]
  want = (np.einsum("bld,dcnh->blcnh", hidden[-2], qkv["kernel"][-1]) + qkv["bias"][-1])
  for i, name in enumerate(("query", "key", "value")):
    np.testing.assert_allclose(attention[name], want[:, :, i], atol=1e-5)
  # Sowing leaves the model's outputs as they are.
  np.testing.assert_array_equal(plain, with_sown)


def test_same_model_gives_zero_loss_and_gradients_reach_the_student_model(classifier):
  teacher, init = classifier
  t_params, s_params = init(3), init(4)

  def loss(model, params, teacher_params):
    t_hidden, t_attention = sown(teacher, teacher_params)
    hidden, attention = sown(model, params)
    return (minilm_loss(attention, t_attention, MASK, dl.MINILM_RELATIONS + ("qq", "kk"))
            + hidden_state_loss(hidden, t_hidden, MASK, dl.uniform_layer_map(2, 2)))

  loss_and_grad = jax.jit(jax.value_and_grad(lambda p, t: loss(teacher, p, t)))
  same, _ = loss_and_grad(t_params, t_params)
  assert abs(float(same)) < 1e-6
  different, grads = loss_and_grad(s_params, t_params)
  assert different > 0.1
  last_qkv = grads["bert"]["encoder"]["layers"]["attention"]["qkv"]["kernel"][-1]
  assert np.abs(last_qkv).max() > 0 and np.all(np.isfinite(last_qkv))
