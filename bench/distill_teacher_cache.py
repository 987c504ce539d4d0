"""What `flaxbert distill --cache-teacher` saves per step, as JSON: the distillation train step
(objectives.distillation: the teacher's forward pass inside the step) against the step that
reads the teacher's stored logits from the batch (objectives.distillation_from_batch), timed
interleaved in one process, with the ratio; and the teacher's forward pass alone, the cost
the cache pays once per example instead of once per example and epoch.

    python bench/distill_teacher_cache.py [--batch 16] [--length 128] [--repeats 5]
        [--student-layers 3]   # an all-MiniLM-L6-v2-shaped teacher, its layers' student

Random parameters of the config's shapes (the cost does not depend on their values). Each
function is compiled once, untimed; each repeat then times every variant once, in turn, so
machine load falls on all of them alike; the median is reported.
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
from flaxbert.models.factory import build_model, init_params
from flaxbert.training import objectives
from flaxbert.training.state import TrainState
from flaxbert.training.step import make_predict_step, make_train_step

# all-MiniLM-L6-v2's shape: 6 layers, 384 wide, 12 heads.
MINILM_L6 = BertConfig(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536)


def _params(model, rng):
  shapes = jax.eval_shape(lambda key: init_params(model, key), jax.random.key(0))
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.02, jnp.float32),
                      shapes)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--length", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--student-layers", type=int, default=3)
  args = p.parse_args()
  rng = np.random.default_rng(0)
  teacher = build_model(MINILM_L6, "classification", 3)
  student = build_model(MINILM_L6.replace(num_layers=args.student_layers), "classification", 3)
  teacher_params, student_params = _params(teacher, rng), _params(student, rng)
  ids = rng.integers(1000, 20000, (args.batch, args.length)).astype(np.int32)
  batch = {"input_ids": ids, "segment_ids": np.zeros_like(ids), "input_mask": np.ones_like(ids),
           "label": rng.integers(0, 3, args.batch).astype(np.int32),
           "example_weight": np.ones(args.batch, np.float32)}
  predict = jax.jit(make_predict_step(teacher))
  cached = dict(batch, teacher_logits=np.asarray(predict(teacher_params, batch)["logits"]))
  tx = optax.adamw(1e-4)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=student_params,
                     opt_state=tx.init(student_params),
                     rng=jax.random.key_data(jax.random.key(0)))
  in_step = jax.jit(make_train_step(
      objectives.distillation(student, teacher, "classification", 2.0, 0.5), tx, lambda s: 0.0))
  from_batch = jax.jit(make_train_step(
      objectives.distillation_from_batch(student, "classification", 2.0, 0.5), tx,
      lambda s: 0.0))
  variants = {
      "step_teacher_in_step": lambda: in_step(state, batch, teacher_params),
      "step_teacher_cached": lambda: from_batch(state, cached),
      "teacher_forward": lambda: predict(teacher_params, batch),
  }
  for fn in variants.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in variants}
  for _ in range(args.repeats):
    for name, fn in variants.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
  print(json.dumps({
      "batch": args.batch, "length": args.length, "repeats": args.repeats,
      "teacher_layers": MINILM_L6.num_layers, "student_layers": args.student_layers,
      "load_average": os.getloadavg()[0], "median_ms": {k: round(v, 1) for k, v in ms.items()},
      "steps_per_s_cached_over_in_step": round(ms["step_teacher_in_step"]
                                               / ms["step_teacher_cached"], 3),
  }, indent=1))


if __name__ == "__main__":
  main()
