"""Minimal repro of an XLA SPMD-partitioner miscompile (wrong numbers, no error).

Run:  XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/xla_sharding_bug_repro.py
(jax 0.10.2 CPU; both Shardy and GSPMD: set SHARDY=0 for the latter.)

One dot_general, out[b, d] = sum_e y[b, e] * k[d, e], on a (data=2, fsdp=2, tensor=2) mesh:
  y   : batch over (data, fsdp), e over tensor
  k   : d over fsdp,             e over tensor
  out : batch over (data, fsdp), d over tensor
The partitioned HLO collective-permutes y with pairs {2<->4, 3<->5} (it re-tiles the batch dim
from (data, fsdp) to (fsdp, data) order), all-gathers k over fsdp, does the local dot, all-reduces
over tensor and dynamic-slices d -- but never permutes the batch shards back, so devices 2..5 hold
the rows of the wrong batch shard. Any other output/operand sharding (d replicated, k sharded
(data, tensor) or (None, tensor), batch over (fsdp, data)) gives the right answer.

In flaxbert this was the backward pass of the MLM decoder tied to the word-embedding table
(table sharded (vocab->tensor, embed->fsdp)): d(hidden) = d(logits) @ table, with the head's
hidden states' embed dim propagated onto `tensor`.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

if os.environ.get("SHARDY"):
  jax.config.update("jax_use_shardy_partitioner", os.environ["SHARDY"] == "1")

assert jax.device_count() >= 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
sh = lambda *spec: NamedSharding(mesh, P(*spec))

rng = np.random.default_rng(0)
y = rng.normal(size=(8, 4)).astype(np.float32)
k = rng.normal(size=(4, 4)).astype(np.float32)


def f(y, k):
  return jnp.einsum("be,de->bd", y, k, precision=jax.lax.Precision.HIGHEST)


ref = f(y, k)
out = jax.jit(f, out_shardings=sh(("data", "fsdp"), "tensor"))(
    jax.device_put(y, sh(("data", "fsdp"), "tensor")), jax.device_put(k, sh("fsdp", "tensor")))
err = float(np.abs(np.asarray(out) - np.asarray(ref)).max())
print(f"max |sharded - unsharded| = {err:.3g}  (max |ref| = {np.abs(ref).max():.3g})")
print(jax.jit(f, out_shardings=sh(("data", "fsdp"), "tensor")).lower(
    jax.device_put(y, sh(("data", "fsdp"), "tensor")),
    jax.device_put(k, sh("fsdp", "tensor"))).compile().as_text() if os.environ.get("HLO") else "",
    end="")
print("BUG REPRODUCED" if err > 1e-3 else "ok (not reproduced)")
