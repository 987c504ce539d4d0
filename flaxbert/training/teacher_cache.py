"""A distillation teacher's outputs on the training set, computed once (`--cache-teacher`).

One deterministic pass of the teacher over the prepared training examples in record order
(jitted, the teacher's parameters and the batches sharded over the mesh as in the training
step, with progress), stored under WORKDIR/data/teacher_outputs/<key>/ as one float32 .npy
per output, row i being stored example i, written into a temporary sibling and renamed
into place when whole. The key hashes the prepared data's fingerprint (its builder config
name: the source files' bytes, the tokenizer, the settings) with the teacher's
architecture, head and parameter values: a changed teacher or training file computes
afresh, and a resumed run reads back the very values it trained on.

The training batches join the rows by example (data/pipeline.py TaskData.batches `joined`)
as `teacher_<output>` fields, and the step reads them instead of running the teacher
(objectives.distillation_from_batch): the teacher is not on the devices while the student
trains. Only the head's outputs are stored: losses on the teacher's hidden states or
attention need its layers at every step, and cannot use the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import numpy as np

from flaxbert import multihost
from flaxbert import sharding as mesh_lib
from flaxbert.bundle import Bundle
from flaxbert.data.pipeline import TaskData
from flaxbert.models.factory import dummy_inputs
from flaxbert.output_dir import new_directory
from flaxbert.progress import progress_bar
from flaxbert.training.objectives import BERT_INPUTS, TEACHER_PREFIX
from flaxbert.training.state import host_params, place_params
from flaxbert.training.step import make_predict_step

log = logging.getLogger("flaxbert")

# The outputs the KD term reads, per head (losses.distill_sums).
_OUTPUTS = {"classification": ("logits",), "regression": ("logits",), "tagging": ("logits",),
            "span_qa": ("start_logits", "end_logits")}


def batch_keys(head: str) -> tuple[str, ...]:
  """The batch fields the cached outputs of a `head` teacher become."""
  return tuple(TEACHER_PREFIX + name for name in _OUTPUTS[head])


def teacher_digest(teacher: Bundle) -> str:
  """A hash of what the teacher's outputs depend on: head, model config, parameter values."""
  digest = hashlib.sha256(json.dumps(
      {"head": teacher.head, "config": teacher.config.to_dict(),
       "num_labels": getattr(teacher.model, "num_labels", None)}, sort_keys=True).encode())
  for path, leaf in jax.tree_util.tree_flatten_with_path(teacher.params)[0]:
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)} {array.dtype} {array.shape}".encode())
    digest.update(array.reshape(-1).view(np.uint8))
  return digest.hexdigest()[:20]


def teacher_outputs(teacher: Bundle, data: TaskData, mesh, directory: str, batch_size: int,
                    show_progress: bool = True) -> dict[str, np.ndarray]:
  """The teacher's outputs on every training example, `teacher_<output>` -> [N, ...] float32
  (memory-mapped), computed into `directory`/<key>/ unless an earlier run stored them."""
  key = hashlib.sha256(f"{data.builder.builder_config.name} {teacher_digest(teacher)}"
                       .encode()).hexdigest()[:20]
  path = os.path.join(directory, key)
  keys = batch_keys(teacher.head)
  stored = os.path.isdir(path)
  multihost.check_same("teacher outputs", str(stored))
  if stored:
    log.info("flaxbert: the teacher's outputs from %s", path)
  else:
    outputs = _compute(teacher, data, mesh, batch_size, show_progress)
    if jax.process_index() == 0:
      with new_directory(path, "teacher outputs") as tmp:
        for name in keys:
          np.save(os.path.join(tmp, f"{name}.npy"), outputs[name])
    multihost.barrier("teacher outputs")
    log.info("flaxbert: the teacher's outputs on %d examples stored in %s",
             data.num_examples("train"), path)
  return {name: np.load(os.path.join(path, f"{name}.npy"), mmap_mode="r") for name in keys}


def _compute(teacher: Bundle, data: TaskData, mesh, batch_size: int, show_progress: bool
             ) -> dict[str, np.ndarray]:
  """One pass over the training split in record order; every process gets all rows."""
  dp = mesh_lib.data_parallel_size(mesh)
  batch_size = -(-batch_size // dp) * dp
  params = place_params(teacher.model, teacher.params, mesh, dummy_inputs())
  step = jax.jit(make_predict_step(teacher.model))
  n = data.num_examples("train")
  names = _OUTPUTS[teacher.head]
  outputs: dict[str, np.ndarray] = {}
  batches = data.batches("train", batch_size=batch_size, shuffle=False, num_epochs=1,
                         drop_remainder=False)
  with jax.set_mesh(mesh), progress_bar(total=n, desc="teacher outputs", unit="example",
                                        disable=not show_progress) as bar:
    for index, batch in enumerate(batches):
      result = step(params, mesh_lib.global_batch({k: batch[k] for k in BERT_INPUTS}, mesh))
      result = host_params({name: result[name] for name in names})   # all processes' rows
      start = index * batch_size
      stop = min(start + batch_size, n)
      for name in names:
        if name not in outputs:
          outputs[name] = np.zeros((n,) + result[name].shape[1:], np.float32)
        outputs[name][start:stop] = result[name][:stop - start]
      bar.update(stop - start)
  return {TEACHER_PREFIX + name: value for name, value in outputs.items()}

