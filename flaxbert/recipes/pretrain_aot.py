"""Compiling the pretraining step for a TPU topology without TPUs (ahead of time).

`jax.experimental.topologies` describes e.g. a v5p:4x4x8 pod (128 chips) from libtpu alone
(`pip install "jax[tpu]"`); the real train step is lowered with its real shardings onto those
devices and compiled, and XLA's memory and cost analyses say whether it fits before any pod
time is spent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax.experimental import topologies

from flaxbert import sharding as mesh_lib
from flaxbert.data.packing import batch_shapes
from flaxbert.data.pretraining import default_max_predictions
from flaxbert.errors import FlaxbertError
from flaxbert.models.factory import build_model, param_count
from flaxbert.recipes.bert_pretrain import dummy_pretraining_inputs, model_config
from flaxbert.training import objectives, optim
from flaxbert.training.metrics import flops_per_token
from flaxbert.training.state import abstract_state
from flaxbert.training.step import make_train_step

GIB = 2 ** 30


def topology_devices(name: str, chip_config: str = "megacore", num_slices: int = 1):
  try:
    topology = topologies.get_topology_desc(
        platform="tpu", topology_name=name, chip_config_name=chip_config,
        chips_per_host_bounds=(2, 2, 1), num_slices=num_slices)
  except Exception as e:  # libtpu missing or an unknown topology name
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise FlaxbertError(f"cannot describe TPU topology {name!r} ({first}); it needs "
                        "jax[tpu] installed (pip install \"jax[tpu]\")") from None
  return topology.devices


def compile_for_topology(cfg, topology: str, chip_config: str = "megacore",
                         num_slices: int = 1) -> dict:
  """Lowers and compiles the train step of `cfg` for `topology`; returns a report dict."""
  report = compile_report(cfg, topology_devices(topology, chip_config, num_slices))
  return {"topology": topology, **report}


def compile_report(cfg, devices) -> dict:
  """Compiles the train step of `cfg` over `devices` (real or from a topology description)
  without running it: per-chip memory and FLOPs per step."""
  mesh = mesh_lib.make_mesh(cfg.mesh, devices=devices)
  dp = mesh_lib.data_parallel_size(mesh)
  if cfg.batch_size % (dp * cfg.accum_steps):
    raise FlaxbertError(f"--batch-size {cfg.batch_size} must divide by data x fsdp ({dp}) x "
                        f"accumulation steps ({cfg.accum_steps})")
  config = model_config(cfg, cfg.vocab_size)
  model = build_model(config, "pretraining")
  opt_cfg = cfg.optimizer_config()
  tx = optim.make_optimizer(opt_cfg)
  state, shardings = abstract_state(model, tx, mesh, dummy_pretraining_inputs())
  b, s = cfg.batch_size, cfg.seq_len
  p = cfg.max_predictions or default_max_predictions(s)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  shapes = batch_shapes(b, s, p, getattr(cfg, "pack", False))
  batch = {k: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=batch_sharding)
           for k, (shape, dtype) in shapes.items()}
  step = jax.jit(make_train_step(objectives.pretraining(model), tx,
                                 optim.learning_rate_schedule(opt_cfg),
                                 cfg.accum_steps),
                 in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch).compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  per_chip = {
      "arguments_gib": memory.argument_size_in_bytes / GIB,
      "outputs_gib": memory.output_size_in_bytes / GIB,
      "aliased_gib": memory.alias_size_in_bytes / GIB,
      "temporaries_gib": memory.temp_size_in_bytes / GIB,
      "generated_code_gib": memory.generated_code_size_in_bytes / GIB,
  }
  per_chip["peak_estimate_gib"] = (per_chip["arguments_gib"] + per_chip["outputs_gib"]
                                   - per_chip["aliased_gib"] + per_chip["temporaries_gib"])
  xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  model_flops = flops_per_token(config, s) * b * s
  return {
      "chips": len(devices), "device_kind": devices[0].device_kind,
      "mesh": dict(mesh.shape), "model": cfg.model, "parameters": param_count(state.params),
      "batch_size": b, "seq_len": s, "accum_steps": cfg.accum_steps,
      "per_chip_memory": per_chip,
      # XLA's cost analysis counts the body of the scanned layer loop once, not per layer, so
      # it undercounts; the model count (6N + 12LHS per token) is the one to plan with.
      "xla_flops_per_step_per_chip": xla_flops,
      "model_flops_per_step": model_flops,
      "model_flops_per_step_per_chip": model_flops / len(devices),
  }
