"""What the feature terms of `flaxbert distill` cost per training step, as JSON: the recipe's
whole train step (training/step.py with AdamW) for logit distillation alone
(objectives.distillation) and with the hidden-state and attention terms
(objectives.feature_distillation: both models sowing, a projection to the teacher's width,
regrouped relation heads), timed interleaved in one process, and the ratio.

    python bench/distill_feature_step.py [--batch 8] [--length 128] [--repeats 5]

The teacher has all-MiniLM-L6-v2's shape (6 layers, 384 wide, 12 heads), the student half its
depth and width with 6 heads (so MiniLM's relations need --relation-heads, here 12). Random
parameters (the cost does not depend on their values). Each step is compiled once, untimed;
each repeat then times every variant once, in turn, so machine load falls on both alike; the
median is reported.
"""

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxbert.models.config import BertConfig
from flaxbert.models.factory import build_model, dummy_inputs, init_params
from flaxbert.training import distill_features, distill_losses, objectives
from flaxbert.training.state import create_train_state
from flaxbert.training.step import make_train_step
from flaxbert import sharding

TEACHER = BertConfig(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536,
                     hidden_dropout=0.0, attention_dropout=0.0)
STUDENT = BertConfig(hidden_size=192, num_layers=3, num_heads=6, intermediate_size=768,
                     hidden_dropout=0.0, attention_dropout=0.0)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--length", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  mesh = sharding.make_mesh(None)
  teacher, student = build_model(TEACHER, "classification", 2), build_model(
      STUDENT, "classification", 2)
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(lambda key: init_params(teacher, key), jax.random.key(0))
  teacher_params = jax.tree.map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.02, jnp.float32), shapes)
  ids = rng.integers(1000, 20000, (args.batch, args.length)).astype(np.int32)
  batch = {"input_ids": ids, "segment_ids": np.zeros_like(ids), "input_mask": np.ones_like(ids),
           "label": rng.integers(0, 2, args.batch).astype(np.int32),
           "example_weight": np.ones(args.batch, np.float32)}
  features = distill_features.FeatureSettings(
      hidden_weight=1.0, attention_weight=1.0, relation_heads=12,
      layer_map=distill_losses.uniform_layer_map(STUDENT.num_layers, TEACHER.num_layers))
  trained = distill_features.StudentWithProjection(student, TEACHER.hidden_size)
  tx = optax.adamw(1e-4)
  variants = {}
  for name, model, objective in (
      ("logits", student, objectives.distillation(student, teacher, "classification", 2.0,
                                                   0.5)),
      ("logits_hidden_attention", trained, objectives.feature_distillation(
          trained, teacher, "classification", 2.0, 0.5, features))):
    state, _ = create_train_state(model, tx, mesh, 0, dummy_inputs())
    step = jax.jit(make_train_step(objective, tx, lambda s: 1e-4), donate_argnums=0)
    with jax.set_mesh(mesh):
      state, metrics = step(state, batch, teacher_params)   # compiles
      jax.block_until_ready(metrics)
    variants[name] = [step, state]
  times = {name: [] for name in variants}
  with jax.set_mesh(mesh):
    for _ in range(args.repeats):
      for name, variant in variants.items():
        start = time.perf_counter()
        variant[1], metrics = variant[0](variant[1], batch, teacher_params)
        jax.block_until_ready(metrics)
        times[name].append(time.perf_counter() - start)
  ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
  print(json.dumps({
      "batch": args.batch, "length": args.length, "repeats": args.repeats,
      "load_average": os.getloadavg()[0], "median_ms": {k: round(v, 1) for k, v in ms.items()},
      "features_over_logits": round(ms["logits_hidden_attention"] / ms["logits"], 3),
  }, indent=1))


if __name__ == "__main__":
  main()
