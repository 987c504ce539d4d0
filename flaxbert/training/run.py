"""The run skeleton every recipe goes through: a workdir that is never lost or mixed up.

    with open_run(cfg, kind="pretrain", check=...) as run:
      tokenizer_dir = run.tokenizer(train=..., copy_from=...)   # process 0 first, atomic
      run.record(model_config=..., head=...)                    # run_config.json
      result = run.train(total_steps=..., model=..., ...)       # the loop: resume, metrics
      run.save_bundle("bundle", bundle)                         # replaced atomically

What a run gets from the skeleton:
- Identity: the workdir records the run's kind and the settings that shape it (every config
  field whose metadata does not say `identity: False`: model, data, batch, optimizer...).
  A re-run with other settings, or another kind of run, stops with one line naming the
  differences, before anything is written.
- One owner: process 0 holds an OS lock on WORKDIR/.lock for the run's life; a second run on
  the same workdir stops with one line.
- Multi-host: tokenizer and data are prepared once (process 0; the others wait at a barrier,
  then check they see the same files); a failing process takes the others down (multihost.py).
- Faults: an OSError anywhere (full disk, read-only, permissions) is one line naming the path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from flaxbert import bundle as bundle_lib
from flaxbert import multihost
from flaxbert import sharding
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError, os_error_line
from flaxbert.jsonfile import read_json, write_json
from flaxbert.models.config import BertConfig
from flaxbert.models.encdec import EncDecModel
from flaxbert.models.encdec_config import EncDecConfig
from flaxbert.models.factory import build_model
from flaxbert.training import loop
from flaxbert.training.state import host_params

log = logging.getLogger("flaxbert")

RUN_CONFIG = "run_config.json"
LOCK_FILE = ".lock"
TOKENIZER = "tokenizer"
# Fields every recipe's config shares, read by the loop (see LoopConfig).
_LOOP_FIELDS = ("log_every", "keep_checkpoints", "async_checkpoints", "progress", "seed")


def _plain(value):
  if isinstance(value, tuple):
    return [_plain(v) for v in value]
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  return value


def identity_of(cfg) -> dict:
  """The settings of `cfg` that shape a run (metadata `identity` not False), JSON-plain."""
  return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
          if f.name != "workdir" and f.metadata.get("identity", True)}


def settings_of(cfg) -> dict:
  return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _differences(old: dict, new: dict) -> list[str]:
  out = []
  for key in sorted(set(old) | set(new)):
    if key in old and key in new and old[key] != new[key]:
      out.append(f"{key} {json.dumps(old[key])} -> {json.dumps(new[key])}")
    elif key in old and key not in new:
      out.append(f"{key} {json.dumps(old[key])} -> (none)")
    elif key in new and key not in old and new[key] not in (None, False, [], ()):
      out.append(f"{key} (none) -> {json.dumps(new[key])}")
  return out


class _WorkdirLock:
  """An exclusive, non-blocking flock on WORKDIR/.lock held for the process's run."""

  def __init__(self, workdir: str, option: str = "--workdir"):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = open(self.path, "a+", encoding="utf-8")
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      owner = self._file.read().strip() or "another process"
      self._file.close()
      raise FlaxbertError(f"{workdir}: in use by another flaxbert run ({owner}); wait for it "
                          f"to finish or use another {option}") from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f"pid {os.getpid()}")
    self._file.flush()

  def release(self) -> None:
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()


def _check_identity(workdir: str, kind: str, identity: dict, option: str = "--workdir") -> dict:
  """The workdir's recorded run (or a new record), refusing another kind or settings."""
  path = os.path.join(workdir, RUN_CONFIG)
  if not os.path.isfile(path):
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
      raise FlaxbertError(f"{workdir}: has checkpoints but no {RUN_CONFIG} saying what run "
                          f"made them; use another {option}")
    return {"kind": kind, "identity": identity}
  record = read_json(path)
  recorded_kind = record.get("kind")
  if recorded_kind is not None and recorded_kind != kind:
    raise FlaxbertError(f"{workdir}: holds a {recorded_kind} run, not a {kind} run; use "
                        f"another {option} (nothing was changed)")
  old = record.get("identity")
  if old is None:   # written by an earlier flaxbert: compare what it recorded
    old = {k: v for k, v in record.get("run", {}).items() if k in identity}
  differences = _differences(old, identity)
  if differences:
    checkpoints = os.path.join(workdir, "checkpoints")
    untrained = not (os.path.isdir(checkpoints)
                     and any(n.isdigit() for n in os.listdir(checkpoints)))
    raise FlaxbertError(
        f"{workdir}: was made with other settings ({'; '.join(differences)}); re-run with the "
        f"original settings to resume, or use another {option}"
        + (" (no step was trained in it yet)" if untrained else "") + "; nothing was changed")
  record.update(kind=kind, identity=identity)
  return record


def _tree_digest(directory: str) -> str:
  """A digest of a directory's file names and contents (to compare across processes)."""
  digest = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(directory)):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      digest.update(os.path.relpath(path, directory).encode())
      with open(path, "rb") as f:
        digest.update(hashlib.sha256(f.read()).digest())
  return digest.hexdigest()


@dataclasses.dataclass
class Run:
  """An open run: its config, kind, workdir and mesh, and the lifecycle's operations."""

  cfg: Any
  kind: str
  workdir: str
  mesh: Any
  record_: dict

  @property
  def is_main(self) -> bool:
    return jax.process_index() == 0

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def prepare(self, fn: Callable, name: str):
    """fn() on process 0, then on the others (which find what it made) after a barrier."""
    return multihost.on_process_zero_first(fn, name)

  def tokenizer(self, *, copy_from: str | None = None,
                train: Callable[[str], Any] | None = None) -> str:
    """WORKDIR/tokenizer, made once: a copy of `copy_from` (a tokenizer, bundle or HF
    directory) or `train(directory)`; written atomically by process 0; every process then
    checks it sees the same files."""
    directory = self.path(TOKENIZER)

    def make():
      if os.path.isdir(directory):
        return
      with bundle_lib.new_directory(directory) as tmp:
        if copy_from is not None:
          source = copy_from
          if os.path.isdir(os.path.join(copy_from, TOKENIZER)):
            source = os.path.join(copy_from, TOKENIZER)
          load_tokenizer(source).save(tmp)
        else:
          train(tmp)

    self.prepare(make, "tokenizer")
    multihost.check_same("tokenizer", _tree_digest(directory))
    return directory

  def record(self, **fields) -> None:
    """Adds to run_config.json what the run learned after opening (model config, head...)."""
    self.record_.update(_plain(fields))
    if self.is_main:
      write_json(self.path(RUN_CONFIG), self.record_)

  def loop_config(self, *, total_steps: int, eval_every: int, checkpoint_every: int,
                  desc: str, **extra) -> loop.LoopConfig:
    common = {name: getattr(self.cfg, name) for name in _LOOP_FIELDS}
    return loop.LoopConfig(workdir=self.workdir, total_steps=total_steps,
                           eval_every=eval_every, checkpoint_every=checkpoint_every,
                           desc=desc, **common, **extra)

  def train(self, loop_cfg: loop.LoopConfig, **kwargs) -> loop.LoopResult:
    return loop.run(loop_cfg, mesh=self.mesh, **kwargs)

  def evaluate_sums(self, eval_step, params, batches: Iterable[dict], summarise: Callable,
                    prefix: str) -> dict:
    return evaluate_sums(self.mesh, eval_step, params, batches, summarise, prefix)

  def save_bundle(self, name: str, bundle: bundle_lib.Bundle, params=None,
                  extra: dict | None = None, files: dict[str, dict] | None = None) -> str:
    """Replaces WORKDIR/name with the bundle atomically (process 0). Device parameters are
    gathered first: a collective, so every process calls this."""
    params = params if params is not None else bundle.params
    on_devices = any(isinstance(x, jax.Array) for x in jax.tree.leaves(params))
    host = host_params(params) if on_devices else params
    out = self.path(name)
    if self.is_main:
      bundle_lib.replace(out, dataclasses.replace(bundle, params=host), extra, files)
    return out


def evaluate_sums(mesh, eval_step, params, batches: Iterable[dict], summarise: Callable,
                  prefix: str) -> dict:
  """Sums eval_step over the batches on the mesh, then `summarise`s the totals once: the
  metrics of one large batch, whatever the batch count."""
  totals = None
  with jax.set_mesh(mesh):
    for batch in batches:
      sums = eval_step(params, sharding.global_batch(batch, mesh))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise FlaxbertError("the evaluation data is empty")
  return {f"{prefix}{k}": float(v) for k, v in summarise(jax.device_get(totals)).items()}


@contextlib.contextmanager
def open_run(cfg, kind: str, check: Callable[[Any, Any], None] | None = None,
             option: str = "--workdir"):
  """Opens cfg.workdir for a run of `kind`: mesh, checks, lock, identity (see the module
  docstring). OSErrors inside the block become one line naming the path; `option` is the
  flag that names the workdir, for the messages."""
  workdir = os.path.abspath(cfg.workdir)
  lock = None
  try:
    mesh = sharding.make_mesh(getattr(cfg, "mesh", None))
    if check is not None:
      check(cfg, mesh)
    identity = identity_of(cfg)
    record = {}
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      lock = _WorkdirLock(workdir, option)
      record = _check_identity(workdir, kind, identity, option)
      record.setdefault("settings", settings_of(cfg))
      write_json(os.path.join(workdir, RUN_CONFIG), record)
    multihost.barrier("open-workdir")
    if jax.process_index() != 0:
      record = read_json(os.path.join(workdir, RUN_CONFIG))
      if record.get("identity") != identity:
        raise FlaxbertError(f"process {jax.process_index()} runs other settings than process "
                            "0; every process must run the same command")
    yield Run(cfg, kind, workdir, mesh, record)
  except OSError as e:
    raise FlaxbertError(os_error_line(e, workdir)) from None
  finally:
    if lock is not None:
      lock.release()


def _latest_params(workdir: str):
  directory = os.path.join(workdir, "checkpoints")
  manager = ocp.CheckpointManager(directory)
  try:
    step = manager.latest_step()
    if step is None:
      raise FlaxbertError(f"{workdir}: no checkpoint to export")
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
  finally:
    manager.close()
  return restored["state"]["params"]


def export_workdir(workdir: str, out: str) -> str:
  """Writes a new bundle `out` of a run's newest checkpoint (the model its run recorded)."""
  workdir = os.path.abspath(workdir)
  record = read_json(os.path.join(workdir, RUN_CONFIG))
  model_config = record.get("model_config")
  if model_config is None:
    raise FlaxbertError(f"{workdir}/{RUN_CONFIG}: records no model (the run stopped before "
                        "its model was made)")
  # Runs of earlier versions recorded no "model": an encoder-decoder config says itself.
  if record.get("model") == "encdec" or "num_encoder_layers" in model_config:
    config = EncDecConfig.from_dict(model_config)
    model, head = EncDecModel(config), "seq2seq"
  else:
    config = BertConfig.from_dict(model_config)
    head = record.get("head", "pretraining")
    model = build_model(config, head, record.get("num_labels"))
  params = _latest_params(workdir)
  if record.get("bundle_params_key"):   # a trained tree with more than the model (distill)
    params = params[record["bundle_params_key"]]
  tokenizer = load_tokenizer(os.path.join(workdir, TOKENIZER))
  bundle_lib.save(out, bundle_lib.Bundle(model, params, tokenizer, config, head,
                                         record.get("labels")))
  return out
