"""The one generic train step: gradient accumulation equals the large batch for every
objective (fine-tuning heads and the encoder-decoder; pretraining in test_pretrain.py)."""

import jax
import numpy as np
import pytest

from flaxbert import sharding
from flaxbert.models.config import BertConfig
from flaxbert.models.encdec import EncDecModel, dummy_inputs as encdec_dummy_inputs
from flaxbert.models.encdec_config import get_config as encdec_config
from flaxbert.models.factory import build_model, dummy_inputs
from flaxbert.training import objectives, optim
from flaxbert.training.state import create_train_state
from flaxbert.training.step import make_train_step

STEPS, BATCH = 3, 8


def _classification_batches(rng):
  for _ in range(STEPS):
    ids = rng.integers(5, 100, (BATCH, 16)).astype(np.int32)
    mask = (rng.random((BATCH, 16)) < 0.8).astype(np.int32)
    mask[:, 0] = 1
    yield {"input_ids": ids * mask, "segment_ids": np.zeros_like(ids), "input_mask": mask,
           # two rows pad an incomplete batch: weight 0, as the fine-tuning loader makes them
           "example_weight": np.array([1] * (BATCH - 2) + [0, 0], np.float32),
           "label": rng.integers(0, 3, BATCH).astype(np.int32)}


def _tagging_batches(rng):
  for batch in _classification_batches(rng):
    labels = rng.integers(0, 3, (BATCH, 16)).astype(np.int32)
    labels[batch["input_mask"] == 0] = -1           # ignored positions
    labels[:, 5:9] = -1                             # continuation sub-tokens
    batch.pop("label")
    yield dict(batch, labels=labels)


def _seq2seq_batches(rng):
  for _ in range(STEPS):
    src = rng.integers(4, 64, (BATCH, 10)).astype(np.int32)
    tgt = rng.integers(4, 64, (BATCH, 9)).astype(np.int32)
    src_mask = (np.arange(10)[None] < rng.integers(3, 11, (BATCH, 1))).astype(np.int32)
    tgt_mask = (np.arange(9)[None] < rng.integers(2, 10, (BATCH, 1))).astype(np.int32)
    yield {"source_ids": src * src_mask, "source_mask": src_mask,
           "target_ids": tgt * tgt_mask, "target_mask": tgt_mask}


def _bert(head):
  config = BertConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=2,
                      intermediate_size=64, max_position_embeddings=32, hidden_dropout=0.0,
                      attention_dropout=0.0)
  model = build_model(config, head, 3)
  return model, objectives.finetuning(model, head), dummy_inputs(), (
      _tagging_batches if head == "tagging" else _classification_batches)


def _encdec():
  model = EncDecModel(encdec_config("tiny", vocab_size=64, hidden_dropout=0.0,
                                    attention_dropout=0.0))
  return model, objectives.seq2seq(model, 0.1), encdec_dummy_inputs(), _seq2seq_batches


@pytest.mark.parametrize("make", [lambda: _bert("classification"), lambda: _bert("tagging"),
                                  _encdec], ids=["classification", "tagging", "seq2seq"])
def test_accumulation_equals_the_large_batch(make):
  model, objective, dummy, batches = make()
  opt = optim.OptimizerConfig(learning_rate=1e-3, warmup_steps=0, total_steps=STEPS)
  tx = optim.make_optimizer(opt)
  mesh = sharding.make_mesh(None)
  runs = {}
  for k in (1, 4):
    state, _ = create_train_state(model, tx, mesh, 0, dummy)
    step = jax.jit(make_train_step(objective, tx, optim.learning_rate_schedule(opt), k))
    losses = []
    with jax.set_mesh(mesh):
      for batch in batches(np.random.default_rng(0)):
        state, metrics = step(state, batch)
        losses.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    runs[k] = (np.array(losses), state.params)
  assert runs[1][0][-1, 0] != runs[1][0][0, 0]   # it really trained
  np.testing.assert_allclose(runs[4][0], runs[1][0], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(runs[1][1]), jax.tree.leaves(runs[4][1])):
    np.testing.assert_allclose(a, b, atol=3e-6)


def test_a_run_from_parameters_starts_from_the_state_random_init_would_give_with_them():
  """train_state_of_params (a fine-tune's or distillation's start, without compiling the
  random initialisation) equals create_train_state's state with the parameters and a fresh
  optimizer state put in: the same step, RNG, parameters, moments and shardings."""
  from flaxbert.training.state import train_state_of_params
  model = build_model(BertConfig(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2,
                                 intermediate_size=32, max_position_embeddings=16),
                      "classification", 3)
  tx = optim.make_optimizer(optim.OptimizerConfig(learning_rate=1e-3, warmup_steps=1,
                                                  total_steps=4))
  mesh = sharding.make_mesh(None)
  random, shardings = create_train_state(model, tx, mesh, 7, dummy_inputs())
  params = jax.tree.map(lambda x: np.asarray(x) + 1.0, random.params)
  state, placed_shardings = train_state_of_params(model, tx, mesh, 7, dummy_inputs(), params)
  want = random.replace(params=params, opt_state=jax.jit(tx.init)(params))
  assert jax.tree.structure(state) == jax.tree.structure(want)
  for got, expected in zip(jax.tree.leaves(state), jax.tree.leaves(want)):
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
  assert placed_shardings == shardings
  assert [x.sharding for x in jax.tree.leaves(state)] == jax.tree.leaves(shardings)
