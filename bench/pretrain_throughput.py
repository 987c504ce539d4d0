"""Pretraining throughput of the real flaxbert train step (optimizer, sharding, metrics included).

Prints one JSON object: per row seq/s, tokens/s, MFU (6N + 12*L*H*S FLOPs per token against
the device's dense bf16 peak), step time and peak device memory. Batches are random tokens
with BERT's shapes (15% masked positions, NSP labels), already on device, so the input
pipeline is not measured here (see bench/input_pipeline.py).

    python bench/pretrain_throughput.py                 # rows for the devices present
    python bench/pretrain_throughput.py --rows base:128:256 large:128:128 --steps 20
    python bench/pretrain_throughput.py --xla-variants default no_triton_gemm latency_hiding

With --corpus, each row runs twice on real pretraining batches of that corpus (as the
launcher makes them, tokenizer trained on it), padded and packed (--pack), and reports the
share of real tokens and effective tokens/s: real (non-padding) tokens per second.

    python bench/pretrain_throughput.py --corpus ../shared/data/corpus/kjv.txt \
        --rows tiny:128:32 tiny:512:8
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.models.config import PRESETS
from flaxbert.models.factory import build_model, dummy_inputs, param_count
from flaxbert import sharding as mesh_lib
from flaxbert.training import objectives, optim
from flaxbert.training.metrics import device_peak_flops, flops_per_token
from flaxbert.training.state import create_train_state
from flaxbert.training.step import make_train_step

NAMES = {"tiny": "tiny", "base": "bert_12_768_12", "large": "bert_24_1024_16"}
GPU_ROWS = ["base:128:256", "base:512:64", "large:128:128"]
CPU_ROWS = ["tiny:128:32"]


def random_batch(rng, batch, seq, vocab):
  predictions = math.ceil(0.15 * seq)
  return {
      "input_ids": rng.integers(5, vocab, (batch, seq)).astype(np.int32),
      "segment_ids": (np.arange(seq)[None] >= seq // 2).repeat(batch, 0).astype(np.int32),
      "input_mask": np.ones((batch, seq), np.int32),
      "masked_positions": np.sort(rng.integers(1, seq, (batch, predictions)), 1).astype(np.int32),
      "masked_ids": rng.integers(5, vocab, (batch, predictions)).astype(np.int32),
      "masked_weights": np.ones((batch, predictions), np.float32),
      "nsp_label": rng.integers(0, 2, (batch,)).astype(np.int32),
  }


def corpus_batches(corpus, seq, batch, vocab, pack, count=4):
  """`count` real batches of `corpus` (tokenizer and prepared data cached under
  ~/.cache/flaxbert-bench, keyed by corpus contents like the launcher's)."""
  import hashlib
  import os
  from flaxbert.data import pipeline
  from flaxbert.data.tokenizer import train_sentencepiece
  with open(corpus, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:16]
  root = os.path.join(os.path.expanduser("~/.cache/flaxbert-bench"), digest)
  tokenizer = os.path.join(root, f"tokenizer{vocab}")
  if not os.path.isdir(tokenizer):
    train_sentencepiece([corpus], vocab, tokenizer + ".tmp")
    os.replace(tokenizer + ".tmp", tokenizer)
  batches = pipeline.pretraining_batches([corpus], tokenizer, os.path.join(root, "prepared"),
                                         batch_size=batch, seq_length=seq, pack=pack)
  return [next(batches) for _ in range(count)]


def measure(name, seq, batch, steps, dtype, mesh_spec, overrides, corpus=None, pack=False):
  config = PRESETS[NAMES.get(name, name)].replace(dtype=dtype, vocab_size=30592,
                                                  max_position_embeddings=max(512, seq),
                                                  **overrides)
  model = build_model(config, "pretraining")
  opt = optim.OptimizerConfig(learning_rate=1e-4, warmup_steps=10, total_steps=10_000)
  tx = optim.make_optimizer(opt)
  mesh = mesh_lib.make_mesh(mesh_spec)
  dummy = dict(dummy_inputs(), masked_positions=jnp.zeros((1, 2), jnp.int32))
  state, shardings = create_train_state(model, tx, mesh, 0, dummy)
  step = jax.jit(make_train_step(objectives.pretraining(model), tx,
                                 optim.learning_rate_schedule(opt)),
                 in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                 out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
  rng = np.random.default_rng(0)
  if corpus:
    host = corpus_batches(corpus, seq, batch, 8000, pack)   # model vocab stays 30592
  else:
    host = [random_batch(rng, batch, seq, config.vocab_size) for _ in range(2)]
  real_share = float(np.mean([np.count_nonzero(b["input_mask"]) / b["input_mask"].size
                              for b in host]))
  batches = [mesh_lib.global_batch(b, mesh) for b in host]
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    for i in range(2):  # warm-up
      state, metrics = step(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for i in range(steps):
      state, metrics = step(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - t0
  step_s = elapsed / steps
  tokens_per_s = batch * seq / step_s
  peak = device_peak_flops()
  stats = jax.devices()[0].memory_stats() or {}
  row = {"corpus": corpus, "packed": pack, "real_token_share": real_share,
         "effective_tokens_per_s": real_share * tokens_per_s} if corpus else {}
  return {
      **row,
      "config": name, "seq_len": seq, "batch_size": batch, "dtype": dtype,
      "parameters": param_count(state.params), "step_s": step_s,
      "seq_per_s": batch / step_s, "tokens_per_s": tokens_per_s,
      "mfu": (flops_per_token(config, seq) * tokens_per_s / (peak * jax.device_count())
              if peak else None),
      "peak_memory_gib": stats.get("peak_bytes_in_use", 0) / 2**30 or None,
      "compile_s": compile_s, "final_loss": float(metrics["loss"]),
  }


# XLA options worth measuring on GPU (each run in a fresh process: XLA reads XLA_FLAGS once).
XLA_VARIANTS = {
    "default": "",
    "no_triton_gemm": "--xla_gpu_enable_triton_gemm=false",
    "latency_hiding": "--xla_gpu_enable_latency_hiding_scheduler=true",
    "no_command_buffer": "--xla_gpu_enable_command_buffer=",
}


def run_variants(names):
  """Re-runs this benchmark under each XLA_FLAGS variant; one JSON object per variant."""
  import os
  import subprocess
  import sys
  argv = [a for a in sys.argv[1:]]
  cut = argv.index("--xla-variants")
  rest = argv[cut + 1:]
  while rest and not rest[0].startswith("--"):
    rest.pop(0)
  argv = argv[:cut] + rest
  out = {}
  for name in names:
    if name.partition(":")[0] not in XLA_VARIANTS and ":" not in name:
      raise SystemExit(f"unknown XLA variant {name!r}: {', '.join(XLA_VARIANTS)} or NAME:FLAGS")
    name, _, literal = name.partition(":")   # a name above, or NAME:FLAGS
    flags = literal or XLA_VARIANTS[name]
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
    proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True,
                          env=env)
    try:
      out[name] = {"xla_flags": flags, **json.loads(proc.stdout)}
    except json.JSONDecodeError:
      out[name] = {"xla_flags": flags, "error": proc.stderr.strip().splitlines()[-1:]}
  print(json.dumps(out, indent=2))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", nargs="+", help="CONFIG:SEQ:BATCH (config tiny|base|large)")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--dtype", default=None, help="default bfloat16 on GPU/TPU, float32 on CPU")
  parser.add_argument("--mesh", default=None)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--corpus", help="real batches of this BERT-format corpus, padded and "
                      "packed, instead of random full-length ones")
  parser.add_argument("--xla-variants", nargs="+", metavar="NAME",
                      help=f"run everything once per XLA_FLAGS variant ({', '.join(XLA_VARIANTS)}"
                      ", or NAME:FLAGS), each in a fresh process")
  args = parser.parse_args()
  if args.xla_variants:
    run_variants(args.xla_variants)
    return
  accelerator = jax.default_backend() != "cpu"
  rows = args.rows or (GPU_ROWS if accelerator else CPU_ROWS)
  dtype = args.dtype or ("bfloat16" if accelerator else "float32")
  overrides = {k: json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
               for k, v in (s.split("=", 1) for s in args.set)}
  results = []
  for row in rows:
    name, seq, batch = row.split(":")
    for pack in ((False, True) if args.corpus else (False,)):
      results.append(measure(name, int(seq), int(batch), args.steps, dtype, args.mesh,
                             overrides, corpus=args.corpus, pack=pack))
  print(json.dumps({"device": jax.devices()[0].device_kind, "device_count": jax.device_count(),
                    "backend": jax.default_backend(), "jax": jax.__version__,
                    "rows": results}, indent=2))


if __name__ == "__main__":
  main()
