"""Sharded seq2seq training on a fake 8-device mesh matches one device. The test runs this
file as a subprocess with 8 host devices; run directly it prints per-mesh losses as JSON."""

import json
import os

import numpy as np

MESHES = [None, "data=8", "fsdp=8", "data=4,tensor=2"]


def _losses(spec, steps=6):
  import jax
  from flaxbert.models.encdec import EncDecModel, dummy_inputs
  from flaxbert.models.encdec_config import get_config
  from flaxbert import sharding as mesh_lib
  from flaxbert.training import objectives, optim
  from flaxbert.training.step import make_train_step
  from flaxbert.training.state import create_train_state
  model = EncDecModel(get_config("tiny", vocab_size=128, hidden_dropout=0.0))
  opt = optim.OptimizerConfig(learning_rate=1e-3, warmup_steps=1, total_steps=steps)
  tx = optim.make_optimizer(opt)
  mesh = mesh_lib.make_mesh(spec, devices=jax.devices()[:1] if spec is None else None)
  state, shardings = create_train_state(model, tx, mesh, 0, dummy_inputs())
  step = jax.jit(make_train_step(objectives.seq2seq(model, 0.1), tx,
                                 optim.learning_rate_schedule(opt)),
                 in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                 out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
  rng = np.random.default_rng(0)
  out = []
  with jax.set_mesh(mesh):
    for _ in range(steps):
      src = rng.integers(4, 128, (16, 12)).astype(np.int32)
      tgt = rng.integers(4, 128, (16, 10)).astype(np.int32)
      smask = (np.arange(12)[None] < rng.integers(3, 13, (16, 1))).astype(np.int32)
      tmask = (np.arange(10)[None] < rng.integers(2, 11, (16, 1))).astype(np.int32)
      batch = {"source_ids": src * smask, "source_mask": smask, "target_ids": tgt * tmask,
               "target_mask": tmask}
      state, metrics = step(state, mesh_lib.global_batch(batch, mesh))
      out.append(float(metrics["loss"]))
  return out


def test_sharded_meshes_match_one_device():
  # This file run with 8 host devices, started at collection (conftest.py).
  from conftest import eight_device_run
  rc, out, err = eight_device_run(os.path.join("tests", "test_seq2seq_sharding.py"))
  assert rc == 0, err[-3000:]
  results = json.loads(out.strip().splitlines()[-1])
  reference = np.array(results.pop("None"))
  assert reference[-1] < reference[0]
  for mesh, losses in results.items():
    assert np.abs(np.array(losses) - reference).max() <= 1e-5, (mesh, losses, reference)


if __name__ == "__main__":
  print(json.dumps({str(spec): _losses(spec) for spec in MESHES}))
