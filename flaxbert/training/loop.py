"""The training loop every launcher shares (pretraining, fine-tuning, seq2seq).

data -> jit(train_step) with in/out shardings and donated state -> metrics -> checkpoints.
The caller supplies the model, optimizer, a pure `train_step(state, batch) -> (state,
metrics)` and an iterator with get_state/set_state; the loop owns resume, logging, periodic
evaluation, checkpointing, SIGTERM, the non-finite-loss stop and the caller's early stop.

Exact resume: the newest readable checkpoint holds parameters, optimizer state, step, RNG key
and the data iterator's position; metrics.jsonl lines after it are dropped. Dropout keys are
derived from the stored key and the step, so a resumed run repeats nothing and skips nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert import sharding as mesh_lib
from flaxbert.training.checkpoint import RunCheckpoints
from flaxbert.training.metrics import MetricsWriter, device_peak_flops
from flaxbert.progress import progress_bar
from flaxbert.training.state import (abstract_state, create_train_state,
                                     train_state_of_params)

log = logging.getLogger("flaxbert")

EXIT_SIGTERM = 143


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  workdir: str
  total_steps: int
  log_every: int = 10
  eval_every: int = 100
  checkpoint_every: int = 100
  keep_checkpoints: int = 3
  async_checkpoints: bool = True
  progress: bool = True
  desc: str = "train"
  seed: int = 0
  tokens_per_step: int | None = None     # for tokens/s
  flops_per_token: float | None = None   # for MFU


@dataclasses.dataclass
class LoopResult:
  state: Any
  last_metrics: dict
  start_step: int
  stopped_early: str | None = None   # the reason `stop` gave, if it ended the run


class _Sigterm:
  """Turns SIGTERM into a flag the loop checks between steps (agreed across processes)."""

  def __init__(self):
    self.received = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.received = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)

  def any_process(self) -> bool:
    if jax.process_count() == 1:
      return self.received
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array(self.received))))


def run(cfg: LoopConfig, *, model, tx, mesh, dummy_inputs: dict,
        train_step: Callable, data: Iterator,
        evaluate: Callable[[Any, int], dict] | None = None,
        count_tokens: Callable[[dict], int] | None = None,
        initial_params: Any = None,
        stop: Callable[[int, dict], str | None] | None = None,
        frozen: tuple = ()) -> LoopResult:
  """Trains to cfg.total_steps (resuming if a checkpoint exists); returns the final state.

  evaluate(params, step) -> metrics is called every cfg.eval_every steps and at the end; its
  metrics are logged with that step's. count_tokens(local batch) -> real (non-padding)
  tokens of this process's rows: tokens_per_s then counts those (all processes) instead of
  cfg.tokens_per_step, for batches whose shapes or padding vary. initial_params (host
  arrays, e.g. a pretrained bundle's) replace the random initialisation of a fresh run.
  stop(step, metrics) is asked after each evaluation before the last step; a reason (a
  string) ends the run there as if it were the last step: that step's checkpoint is written,
  so a re-run restores the stopped state (the caller remembers not to train it further).
  frozen: device arrays (pytrees) placed on the mesh, passed to every step after the batch
  and neither trained, donated nor checkpointed (a distillation teacher's parameters).
  """
  is_main = jax.process_index() == 0
  checkpoints = RunCheckpoints(os.path.join(cfg.workdir, "checkpoints"), cfg.keep_checkpoints,
                               cfg.async_checkpoints)
  target, shardings = abstract_state(model, tx, mesh, dummy_inputs)
  restored = checkpoints.restore(target, data)
  if restored is None:
    if initial_params is None:
      state, shardings = create_train_state(model, tx, mesh, cfg.seed, dummy_inputs)
    else:
      state, shardings = train_state_of_params(model, tx, mesh, cfg.seed, dummy_inputs,
                                               initial_params)
    start = 0
  else:
    start, state = restored
    log.info("flaxbert: resuming from step %d", start)
  writer = MetricsWriter(cfg.workdir, start, enabled=is_main)
  frozen_shardings = tuple(jax.tree.map(lambda x: x.sharding, f) for f in frozen)
  step_fn = jax.jit(train_step, in_shardings=(shardings, mesh_lib.batch_sharding(mesh),
                                              *frozen_shardings),
                    out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
  peak = device_peak_flops()
  sigterm = _Sigterm()
  last: dict = {}
  step = start
  stopped = None
  try:
    with jax.set_mesh(mesh), progress_bar(total=cfg.total_steps, initial=start, desc=cfg.desc,
                                          unit="step",
                                          disable=not (is_main and cfg.progress)) as bar:
      window_start, window_steps, window_tokens = time.perf_counter(), 0, 0
      while step < cfg.total_steps:
        try:
          local_batch = next(data)
        except StopIteration:
          raise FlaxbertError(f"the training data ran out at step {step}") from None
        state, metrics = step_fn(state, mesh_lib.global_batch(local_batch, mesh), *frozen)
        if count_tokens is not None:
          window_tokens += count_tokens(local_batch) * jax.process_count()
        step += 1
        window_steps += 1
        bar.update(1)
        final = step == cfg.total_steps
        eval_due = evaluate is not None and (step % cfg.eval_every == 0 or final)
        log_due = step % cfg.log_every == 0 or final or eval_due
        checkpoint_due = step % cfg.checkpoint_every == 0 or final
        if log_due or checkpoint_due:
          # Checked before any checkpoint of this step is written: nothing non-finite is saved.
          metrics = jax.device_get(metrics)
          if not np.isfinite(metrics["loss"]):
            checkpoints.wait()
            raise FlaxbertError(
                f"loss is {metrics['loss']} at step {step}; stopping. The last good checkpoint "
                f"(step {checkpoints.latest_step()}) is kept in {cfg.workdir}/checkpoints")
        if log_due:
          rate = window_steps / (time.perf_counter() - window_start)
          last = {k: float(v) for k, v in metrics.items()}
          last["steps_per_s"] = rate
          if count_tokens is not None:
            last["tokens_per_s"] = rate * window_tokens / window_steps
          elif cfg.tokens_per_step:
            last["tokens_per_s"] = rate * cfg.tokens_per_step
          if "tokens_per_s" in last and cfg.flops_per_token and peak:
            last["mfu"] = (cfg.flops_per_token * last["tokens_per_s"]
                           / (peak * jax.device_count()))
          if eval_due:
            last.update(evaluate(state.params, step))
          writer.write(step, last)
          bar.set_postfix(loss=f"{last['loss']:.3f}")
          window_start, window_steps, window_tokens = time.perf_counter(), 0, 0
          if eval_due and stop is not None and not final:
            stopped = stop(step, last)
        if checkpoint_due or stopped:
          checkpoints.save(step, state, data, force=not checkpoint_due)
        if stopped:
          log.info("flaxbert: stopping early at step %d: %s", step, stopped)
          break
        if log_due and not final and sigterm.any_process():
          if not checkpoint_due:  # else this step's checkpoint is already being written
            checkpoints.save(step, state, data, force=True)
          checkpoints.close()
          print(f"flaxbert: stopped by SIGTERM at step {step}; checkpoint saved. Re-run the "
                "same command to resume.", flush=True)
          raise SystemExit(EXIT_SIGTERM)
    checkpoints.close()
  except BaseException:
    checkpoints.abandon()   # stops Orbax's background threads; a failure is already raised
    raise
  finally:
    sigterm.restore()
    writer.close()
  return LoopResult(state, last, start, stopped)
