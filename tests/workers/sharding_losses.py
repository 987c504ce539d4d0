"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8: trains the same tiny BERT for
10 steps on several meshes and prints the per-step losses as JSON (one line)."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.models.config import BertConfig
from flaxbert.models.factory import build_model, dummy_inputs
from flaxbert import sharding as mesh_lib
from flaxbert.training import objectives, optim
from flaxbert.training.state import create_train_state
from flaxbert.training.step import make_train_step

MESHES = [None, "data=8", "fsdp=8", "data=4,tensor=2", "data=2,fsdp=2,tensor=2"]
PACKED_MESHES = [None, "data=2,fsdp=2,tensor=2"]   # rows of two examples (data/packing.py)


def batches(steps, batch=16, length=32, predictions=5, vocab=256):
  rng = np.random.default_rng(0)
  for _ in range(steps):
    mask = (np.arange(length)[None] < rng.integers(length // 2, length + 1, (batch, 1)))
    yield {
        "input_ids": (rng.integers(5, vocab, (batch, length)) * mask).astype(np.int32),
        "segment_ids": ((np.arange(length)[None] >= length // 2) * mask).astype(np.int32),
        "input_mask": mask.astype(np.int32),
        "masked_positions": rng.integers(1, length // 2, (batch, predictions)).astype(np.int32),
        # Few distinct targets: a distribution the model can learn in 10 steps.
        "masked_ids": rng.integers(5, 12, (batch, predictions)).astype(np.int32),
        "masked_weights": (rng.random((batch, predictions)) < 0.8).astype(np.float32),
        "nsp_label": rng.integers(0, 2, (batch,)).astype(np.int32),
    }


def packed(batch):
  """Each row as two examples: [0, split) and [split, real end), split at the row's middle."""
  b, length = batch["input_ids"].shape
  real = batch["input_mask"].astype(bool)
  split = real.sum(1, keepdims=True) // 2
  column = np.arange(length)[None]
  second = column >= split
  return dict(batch, input_mask=(real * (1 + second)).astype(np.int32),
              position_ids=np.where(second, column - split, column).astype(np.int32) * real,
              nsp_positions=np.concatenate([np.zeros((b, 1)), split], 1).astype(np.int32),
              nsp_label=np.stack([batch["nsp_label"], 1 - batch["nsp_label"]], 1),
              nsp_weights=np.ones((b, 2), np.float32))


def losses(mesh_spec, steps=10, pack=False):
  config = BertConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
                      intermediate_size=128, max_position_embeddings=32)
  model = build_model(config, "pretraining")
  opt = optim.OptimizerConfig(learning_rate=1e-3, warmup_steps=2, total_steps=steps)
  tx = optim.make_optimizer(opt)
  devices = jax.devices()[:1] if mesh_spec is None else jax.devices()
  mesh = mesh_lib.make_mesh(mesh_spec, devices=devices)
  dummy = dict(dummy_inputs(), masked_positions=jnp.zeros((1, 2), jnp.int32))
  state, shardings = create_train_state(model, tx, mesh, 0, dummy)
  step = jax.jit(make_train_step(objectives.pretraining(model), tx,
                                 optim.learning_rate_schedule(opt)),
                 in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                 out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
  out = []
  with jax.set_mesh(mesh):
    for batch in batches(steps):
      batch = packed(batch) if pack else batch
      state, metrics = step(state, mesh_lib.global_batch(batch, mesh))
      out.append(float(metrics["loss"]))
  qkv = state.params["bert"]["encoder"]["layers"]["attention"]["qkv"]["kernel"]
  return {"losses": out, "qkv_spec": str(qkv.sharding.spec),
          "qkv_shard_shape": list(qkv.addressable_shards[0].data.shape)}


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  results = {str(spec): losses(spec) for spec in MESHES}
  results.update({f"packed:{spec}": losses(spec, pack=True) for spec in PACKED_MESHES})
  print(json.dumps(results))
  sys.stdout.flush()
