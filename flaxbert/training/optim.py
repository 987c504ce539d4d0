"""Optimizers as BERT trains: AdamW (b2 0.999, eps 1e-6, decoupled weight decay 0.01 on kernels
and embeddings only) or LAMB, linear warmup then linear or cosine decay, global-norm clipping."""

from __future__ import annotations

import dataclasses

import jax
import optax

from flaxbert.errors import FlaxbertError

OPTIMIZERS = ("adamw", "lamb")
SCHEDULES = ("linear", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  name: str = "adamw"
  learning_rate: float = 1e-4
  warmup_steps: int = 10_000
  total_steps: int = 1_000_000
  schedule: str = "linear"
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-6
  weight_decay: float = 0.01
  clip_norm: float = 1.0         # 0 disables clipping

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise FlaxbertError(f"optimizer {self.name!r} is not one of {OPTIMIZERS}")
    if self.schedule not in SCHEDULES:
      raise FlaxbertError(f"schedule {self.schedule!r} is not one of {SCHEDULES}")
    if self.total_steps < 1 or self.warmup_steps < 0:
      raise FlaxbertError("total steps must be positive and warmup steps non-negative")
    if self.learning_rate <= 0:
      raise FlaxbertError(f"learning rate must be positive, got {self.learning_rate}")


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  warmup = min(cfg.warmup_steps, cfg.total_steps)
  decay_steps = max(cfg.total_steps - warmup, 1)
  if cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps)
  else:
    decay = optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps)
  if warmup == 0:
    return decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.learning_rate, warmup), decay], [warmup])


def decay_mask(params):
  """Weight decay on matrices only: kernels and embedding tables, never biases or LayerNorm."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) in ("kernel", "embedding"), params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(cfg)
  if cfg.name == "lamb":
    opt = optax.lamb(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                     weight_decay=cfg.weight_decay, mask=decay_mask)
  else:
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=decay_mask)
  if cfg.clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
  return opt
