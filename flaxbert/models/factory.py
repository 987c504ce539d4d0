"""Building a model for a head name and initialising its parameters."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert.models import heads
from flaxbert.models.config import BertConfig, get_config

# Head name -> (model class, whether it takes num_labels).
HEADS = {
    "encoder": (heads.BertEncoder, False),
    "pretraining": (heads.BertForPreTraining, False),
    "classification": (heads.BertForSequenceClassification, True),
    "regression": (heads.BertForSequenceClassification, True),
    "tagging": (heads.BertForTokenClassification, True),
    "span_qa": (heads.BertForQuestionAnswering, False),
}


def build_model(config: BertConfig, head: str = "pretraining",
                num_labels: int | None = None) -> nn.Module:
  if head not in HEADS:
    raise FlaxbertError(f"unknown head {head!r}: use one of {', '.join(HEADS)}")
  cls, takes_labels = HEADS[head]
  if not takes_labels:
    return cls(config)
  if head == "regression":
    num_labels = 1
  if not num_labels or num_labels < 1:
    raise FlaxbertError(f"head {head!r} needs num_labels >= 1")
  return cls(config, num_labels)


def dummy_inputs(batch: int = 1, length: int = 8) -> dict[str, jax.Array]:
  ids = jnp.zeros((batch, length), jnp.int32)
  return {"input_ids": ids, "segment_ids": ids, "input_mask": jnp.ones_like(ids)}


def init_params(model: nn.Module, rng, *, boxed: bool = False):
  """Parameters for `model` from `rng`; logical-axis boxes kept only when `boxed`."""
  variables = model.init(rng, **dummy_inputs())
  params = variables["params"]
  return params if boxed else nn.meta.unbox(params)


def param_count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def get_model(name: str, *, head: str = "pretraining", num_labels: int | None = None,
              seed: int = 0, **overrides):
  """(model, params) for a preset name (GluonNLP's `get_model` names) or config.json path."""
  model = build_model(get_config(name, **overrides), head, num_labels)
  return model, init_params(model, jax.random.key(seed))
