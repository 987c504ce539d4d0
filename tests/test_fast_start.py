"""A short command starts fast: `flaxbert embed` imports only what it uses, and a second
identical run loads every program the first one compiled from the persistent compilation
cache (flaxbert.compilation_cache) instead of compiling it again."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from flaxbert import compilation_cache
from flaxbert.inference import bucketing

# Packages the training and evaluation commands need, never embed.
NOT_FOR_EMBED = ("tensorflow_datasets", "tensorflow", "grain", "array_record", "tensorboardX",
                 "sacrebleu", "scipy", "seqeval", "optax", "torch", "transformers")

# Runs the CLI in a fresh process, counting the programs handed to XLA (a persistent-cache
# hit is one too) and the cache hits among them with jax.monitoring's events, then says what
# it imported.
COUNTING_RUN = f"""
import json, sys
import jax
counts = {{"programs": 0, "cache_hits": 0}}
def on_duration(event, duration, **kwargs):
  if event == "/jax/core/compile/backend_compile_duration":
    counts["programs"] += 1
def on_event(event, **kwargs):
  if event == "/jax/compilation_cache/cache_hits":
    counts["cache_hits"] += 1
jax.monitoring.register_event_duration_secs_listener(on_duration)
jax.monitoring.register_event_listener(on_event)
from flaxbert import cli
rc = cli.main(sys.argv[1:])
counts["imported"] = sorted(m for m in {NOT_FOR_EMBED!r} if m in sys.modules)
print(json.dumps({{"rc": rc, **counts}}))
"""


def run_counting(*args, cache_root):
  jax_own = {name.upper() for name in compilation_cache.jax_settings("")}
  env = {k: v for k, v in os.environ.items() if k not in jax_own}
  env.update(FLAXBERT_CACHE_DIR=str(cache_root), PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-c", COUNTING_RUN, *map(str, args)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["rc"] == 0, proc.stderr[-3000:]
  report["compiled"] = report["programs"] - report["cache_hits"]
  report["stderr"] = proc.stderr
  return report


def cache_entries(cache_root):
  directory = os.path.join(cache_root, "jax")
  return sorted(name for name in os.listdir(directory) if name.endswith("-cache"))


@pytest.fixture(scope="module")
def two_embed_runs(tiny_hf, tmp_path_factory):
  """The same `flaxbert embed` twice in fresh processes sharing a new cache directory (JAX's
  own cache settings, which the test session sets, taken out: flaxbert's defaults apply)."""
  work = tmp_path_factory.mktemp("fast_start")
  texts = work / "texts.txt"
  texts.write_text("the cat sat\non the mat\nab cd\tef gh\n", encoding="utf-8")
  cache_root = work / "cache"
  runs = []
  for n in (1, 2):
    out = work / f"run{n}.npz"
    report = run_counting("embed", tiny_hf, "--input", texts, "--output", out,
                          "--max-length", 32, "--quiet", cache_root=cache_root)
    report.update(entries=cache_entries(cache_root), texts=texts, cache_root=cache_root)
    with np.load(out) as features:
      report["features"] = dict(features)
    runs.append(report)
  return runs


def test_embed_imports_no_training_or_evaluation_packages(two_embed_runs):
  assert two_embed_runs[0]["imported"] == []


def test_second_identical_run_compiles_nothing(two_embed_runs):
  first, second = two_embed_runs
  assert first["compiled"] > 0 and first["entries"], first
  # Every program of the first run was kept, however small: the second one compiles none.
  assert second["programs"] > 0 and second["compiled"] == 0, second
  assert second["entries"] == first["entries"]
  for name, value in first["features"].items():
    np.testing.assert_array_equal(second["features"][name], value, err_msg=name)
  assert "compilation cache" not in first["stderr"] + second["stderr"]


def test_cache_settings_follow_flag_environment_and_jax(tmp_path):
  cache_root = tmp_path / "user-cache"
  env = {"FLAXBERT_CACHE_DIR": str(cache_root)}
  updates, warning = compilation_cache.plan(True, None, env)
  assert warning is None
  assert updates["jax_compilation_cache_dir"] == str(cache_root / "jax")
  assert updates["jax_persistent_cache_min_compile_time_secs"] == 0
  assert os.path.isdir(cache_root / "jax")
  # The default location is per user, under XDG_CACHE_HOME when it is set.
  assert compilation_cache.directory({"XDG_CACHE_HOME": "/xdg"}) == "/xdg/flaxbert/jax"
  home = os.path.expanduser("~")
  assert compilation_cache.directory({}) == os.path.join(home, ".cache", "flaxbert", "jax")
  # A cache JAX was given already (JAX_COMPILATION_CACHE_DIR) is kept with its settings.
  assert compilation_cache.plan(True, str(tmp_path / "jax-own"), env) == ({}, None)
  off = ({"jax_enable_compilation_cache": False}, None)
  assert compilation_cache.plan(False, None, env) == off          # --no-compilation-cache
  assert compilation_cache.plan(True, None, {**env, "FLAXBERT_NO_COMPILATION_CACHE": "1"}) == off


def test_unwritable_cache_directory_turns_the_cache_off_with_one_line(tmp_path):
  blocker = tmp_path / "a-file"
  blocker.write_text("not a directory")
  updates, warning = compilation_cache.plan(True, None, {"FLAXBERT_CACHE_DIR": str(blocker)})
  assert updates == {"jax_enable_compilation_cache": False}
  assert "\n" not in warning and str(blocker) in warning and "FLAXBERT_CACHE_DIR" in warning


def test_no_compilation_cache_flag_end_to_end(tiny_hf, two_embed_runs, tmp_path):
  """--no-compilation-cache: a run beside a cache holding all its programs compiles them all,
  and adds nothing to the cache. (An unusable directory: see the test above; the CLI logs the
  warning `plan` returns.)"""
  first, second = two_embed_runs
  report = run_counting("--no-compilation-cache", "embed", tiny_hf, "--input", first["texts"],
                        "--output", tmp_path / "out.npz", "--max-length", 32, "--quiet",
                        cache_root=first["cache_root"])
  assert report["cache_hits"] == 0 and report["compiled"] == second["programs"], report
  assert cache_entries(first["cache_root"]) == second["entries"]


def test_compiled_cache_takes_parameters_as_arguments():
  """CompiledCache(fn, params): fn(params, batch) compiled once per batch shape, the
  parameters passed in rather than compiled in as constants (embed's weights)."""
  rng = np.random.default_rng(0)
  weights = {"w": rng.normal(size=(32, 8)).astype(np.float32)}
  fn = bucketing.CompiledCache(lambda p, batch: {"y": batch["x"] @ p["w"]}, weights)
  for rows in (4, 4, 2):
    x = rng.normal(size=(rows, 32)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(fn({"x": x})["y"]), x @ weights["w"], rtol=1e-5,
                               atol=1e-5)
  assert len(fn.shapes) == 2
