"""What asking a model for its distillation outputs costs, as JSON: the forward pass (teacher
side) and forward + backward (student side) of a classifier applied plainly and with the
"intermediates" collection mutable, timed interleaved in one process, and the ratio.

    python bench/distill_sown_overhead.py [--batch 16]
        [--length 128] [--repeats 10]   # an all-MiniLM-L6-v2-shaped classifier

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

from flaxbert.models.bert import sown_distill_outputs
from flaxbert.models.config import BertConfig
from flaxbert.models.factory import build_model, init_params
from flaxbert.training import distill_losses

# all-MiniLM-L6-v2's shape: 6 layers, 384 wide, 12 heads.
MINILM_L6 = BertConfig(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536,
                       hidden_dropout=0.0, attention_dropout=0.0)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--length", type=int, default=128)
  p.add_argument("--repeats", type=int, default=10)
  args = p.parse_args()
  model = build_model(MINILM_L6, "classification", 2)
  shapes = jax.eval_shape(lambda key: init_params(model, key), jax.random.key(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.02, jnp.float32),
                        shapes)
  ids = jnp.asarray(rng.integers(1000, 20000, (args.batch, args.length)), jnp.int32)
  mask = jnp.ones_like(ids)

  def plain_loss(p):
    return model.apply({"params": p}, ids, None, mask)["logits"].sum()

  def sown_loss(p):
    out, state = model.apply({"params": p}, ids, None, mask, mutable=["intermediates"])
    hidden, attention = sown_distill_outputs(state["intermediates"])
    targets = jax.lax.stop_gradient((hidden, attention))
    return (out["logits"].sum()
            + distill_losses.hidden_state_loss(hidden, targets[0], mask, ((0, 0), (6, 6)))
            + distill_losses.minilm_loss(attention, targets[1], mask))

  def sown_forward(p):
    out, state = model.apply({"params": p}, ids, None, mask, mutable=["intermediates"])
    return out["logits"], sown_distill_outputs(state["intermediates"])

  variants = {
      "forward": jax.jit(lambda p: model.apply({"params": p}, ids, None, mask)["logits"]),
      "forward_sown": jax.jit(sown_forward),
      "train": jax.jit(jax.grad(plain_loss)),
      "train_sown_with_losses": jax.jit(jax.grad(sown_loss)),
  }
  for fn in variants.values():
    jax.block_until_ready(fn(params))
  times = {name: [] for name in variants}
  for _ in range(args.repeats):
    for name, fn in variants.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(params))
      times[name].append(time.perf_counter() - start)
  ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
  print(json.dumps({
      "batch": args.batch, "length": args.length, "repeats": args.repeats,
      "load_average": os.getloadavg()[0], "median_ms": {k: round(v, 1) for k, v in ms.items()},
      "forward_sown_over_forward": round(ms["forward_sown"] / ms["forward"], 3),
      "train_sown_over_train": round(ms["train_sown_with_losses"] / ms["train"], 3),
  }, indent=1))


if __name__ == "__main__":
  main()
