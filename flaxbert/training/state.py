"""The train state and its one sharded-initialisation path.

eval_shape(init) gives the logical PartitionSpecs of the parameters; optax.tree_map_params
carries them onto the optimizer state (whose moments mirror the parameters); the rules turn
them into NamedShardings; and jit(init, out_shardings=...) materialises every array directly
in its shard, so no host ever holds the whole model.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from flaxbert import sharding as mesh_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: optimizer updates done
  params: Any
  opt_state: Any
  rng: jax.Array           # raw uint32 key data, so checkpoints hold it as a plain array


def _init_state(model: nn.Module, tx: optax.GradientTransformation, dummy: dict, key):
  params = nn.meta.unbox(model.init(key, **dummy)["params"])
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.fold_in(key, 1)))


def state_logical_specs(model: nn.Module, tx: optax.GradientTransformation, dummy: dict):
  """(abstract state, logical PartitionSpec tree of the state)."""
  key = jax.random.key(0)
  boxed = jax.eval_shape(lambda k: model.init(k, **dummy)["params"], key)
  param_specs = nn.get_partition_spec(boxed)
  abstract = jax.eval_shape(lambda k: _init_state(model, tx, dummy, k), key)
  opt_specs = optax.tree_map_params(
      tx, lambda _, spec: spec, abstract.opt_state, param_specs,
      transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))
  specs = TrainState(step=P(), params=param_specs, opt_state=opt_specs, rng=P())
  return abstract, specs


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, mesh, seed: int,
                       dummy: dict):
  """(state, state shardings): parameters and optimizer state initialised in their shards."""
  abstract, specs = state_logical_specs(model, tx, dummy)
  shardings = mesh_lib.logical_shardings(specs, mesh)
  init = jax.jit(lambda k: _init_state(model, tx, dummy, k), out_shardings=shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
    state = init(jax.random.key(seed))
  return state, shardings


def train_state_of_params(model: nn.Module, tx: optax.GradientTransformation, mesh, seed: int,
                          dummy: dict, params):
  """(state, state shardings) of a fresh run that starts from these host parameters (a
  checkpoint's): the state create_train_state gives with them in place of its random ones,
  without compiling and running the model's random initialisation only to drop it. Each
  process places its own shards."""
  abstract, specs = state_logical_specs(model, tx, dummy)
  shardings = mesh_lib.logical_shardings(specs, mesh)

  def place(value, like, sharding):
    return jax.make_array_from_callback(
        like.shape, sharding, lambda index: np.asarray(value, like.dtype)[index])

  placed = jax.tree.map(place, params, abstract.params, shardings.params)
  rng = np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)))
  with jax.set_mesh(mesh):
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(placed)
  state = TrainState(step=place(0, abstract.step, shardings.step), params=placed,
                     opt_state=opt_state, rng=place(rng, abstract.rng, shardings.rng))
  return state, shardings


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, mesh, dummy: dict):
  """ShapeDtypeStructs with shardings: the restore target of a checkpoint."""
  abstract, specs = state_logical_specs(model, tx, dummy)
  shardings = mesh_lib.logical_shardings(specs, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings), shardings


def place_params(model: nn.Module, params, mesh, dummy: dict):
  """Host parameters of `model` on the mesh, sharded as its training state's would be (each
  process places its own shards): a frozen model that runs beside a trained one."""
  boxed = jax.eval_shape(lambda k: model.init(k, **dummy)["params"], jax.random.key(0))
  shardings = mesh_lib.logical_shardings(nn.get_partition_spec(boxed), mesh)
  return jax.tree.map(
      lambda x, s: jax.make_array_from_callback(
          np.shape(x), s, lambda index, x=x: np.asarray(x, np.float32)[index]),
      params, shardings)


def host_params(params):
  """The full parameter values as numpy arrays on every process (sharded arrays gathered)."""
  if jax.process_count() == 1:
    return jax.device_get(params)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(params, tiled=True)
