"""The device mesh, the one list of logical axis rules, and shardings for state and batches.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism whose parameters and
optimizer state are sharded too), `tensor` (Megatron-style splitting of heads, MLP and vocab).
Logical names come from the models: parameters use vocab, embed, heads, kv, mlp, layers;
activations use batch, length, embed, heads, kv, mlp. Rules are tried in order and a mesh axis
is used at most once per array, so `embed -> fsdp` shards parameters while activations,
whose batch already took fsdp, keep embed whole.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from flaxbert.errors import FlaxbertError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_AXIS_RULES = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


def parse_mesh(spec: str | None, device_count: int) -> dict[str, int]:
  """'data=4,tensor=2' -> {'data': 4, 'fsdp': 1, 'tensor': 2}; one axis may be -1 (the rest).

  Without a spec every device goes to `data`.
  """
  sizes = {axis: 1 for axis in MESH_AXES}
  if not spec:
    sizes["data"] = device_count
    return sizes
  fill = None
  for part in spec.split(","):
    name, eq, value = part.strip().partition("=")
    if not eq or name not in MESH_AXES:
      raise FlaxbertError(f"--mesh {spec!r}: expected axis=size pairs over {', '.join(MESH_AXES)}")
    try:
      size = int(value)
    except ValueError:
      raise FlaxbertError(f"--mesh {spec!r}: size of {name} is not an integer") from None
    if size == -1 and fill is None:
      fill = name
    elif size < 1:
      raise FlaxbertError(f"--mesh {spec!r}: size of {name} must be positive (or one -1)")
    sizes[name] = size
  known = math.prod(v for k, v in sizes.items() if k != fill)
  if fill is not None:
    if device_count % known:
      raise FlaxbertError(f"--mesh {spec!r}: {device_count} devices do not divide by {known}")
    sizes[fill] = device_count // known
  if math.prod(sizes.values()) != device_count:
    raise FlaxbertError(f"--mesh {spec!r} needs {math.prod(sizes.values())} devices but "
                        f"{device_count} are present")
  return sizes


def make_mesh(spec: str | None = None, devices=None) -> Mesh:
  """A mesh over all devices of all processes (or `devices`) with Auto axis types.

  Auto (not Explicit) axis types let Linen's logical constraints place activations.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = parse_mesh(spec, len(devices))
  return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_shardings(logical_specs, mesh: Mesh):
  """NamedShardings for a tree of logical PartitionSpecs, through the rules."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_AXIS_RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over data x fsdp; the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from this process's rows (each process passes its own slice)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}
