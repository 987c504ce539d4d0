"""The student of a distillation: a smaller model for the teacher's task, built three ways.

    layers of the teacher   --student-layers N (the default: half the teacher's layers)
    a preset or config      --student tiny | config.json: a fresh model (random weights)
    a bundle                --student BUNDLE: its encoder weights, a fresh head for the task

Every student reads the teacher's batches, so it has the teacher's tokenizer, vocabulary,
segment vocabulary and head (task, number of labels, label names).

Which layers (DistilBERT's choice, generalised): N evenly spaced layers from the first to the
last, index round(i * (L - 1) / (N - 1)) for i = 0..N-1, rounding halves up. For 12 -> 6 that
is 0, 2, 4, 7, 9, 11, the layers DistilBERT's initialisation took; for 6 -> 3 it is 0, 3, 5.
The first layer is kept because it is closest to the (kept) embeddings and the last because
the kept pooler and head read its output; N = 1 keeps the last one for that reason. The
embeddings, the pooler and the head are copied whole.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import jax
import numpy as np

from flaxbert.bundle import bert as bert_bundle
from flaxbert.bundle.store import FORMAT, Bundle
from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json
from flaxbert.models.config import PRESETS, get_config
from flaxbert.models.factory import build_model, init_params

log = logging.getLogger("flaxbert")

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Parameter groups of a pretraining model a general-distillation student takes from its
# teacher where their shapes allow: the embeddings (whose word table is the MLM decoder) and
# the MLM and NSP heads.
EMBEDDINGS, MLM, NSP = ("bert", "embeddings"), ("mlm",), ("nsp",)
MLM_ARCHITECTURES = ("BertForPreTraining", "BertForMaskedLM")


def layer_indices(teacher_layers: int, student_layers: int) -> list[int]:
  """The teacher layers a student of `student_layers` takes (see the module docstring)."""
  if not 1 <= student_layers <= teacher_layers:
    raise FlaxbertError(f"--student-layers {student_layers}: the teacher has {teacher_layers} "
                        "layers; take 1 to all of them")
  if student_layers == 1:
    return [teacher_layers - 1]
  step = (teacher_layers - 1) / (student_layers - 1)
  return [int(math.floor(i * step + 0.5)) for i in range(student_layers)]


def from_teacher_layers(teacher: Bundle, student_layers: int) -> Bundle:
  """The teacher with only `student_layers` of its layers (the scanned stack's leading axis
  is the layer), its embeddings, pooler and head kept."""
  keep = np.asarray(layer_indices(teacher.config.num_layers, student_layers))
  config = teacher.config.replace(num_layers=student_layers)
  params = jax.tree.map(np.asarray, teacher.params)
  encoder = dict(params["bert"]["encoder"])
  encoder["layers"] = jax.tree.map(lambda x: x[keep], encoder["layers"])
  params = {**params, "bert": {**params["bert"], "encoder": encoder}}
  model = build_model(config, teacher.head, getattr(teacher.model, "num_labels", None))
  return dataclasses.replace(teacher, model=model, params=params, config=config)


def fresh(teacher: Bundle, name: str, student_layers: int | None, seed: int) -> Bundle:
  """A randomly initialised student of a preset or config.json, sized to the teacher's
  vocabulary, segments and positions (the batches are the teacher's)."""
  config = get_config(name).replace(
      vocab_size=teacher.config.vocab_size, type_vocab_size=teacher.config.type_vocab_size,
      pad_token_id=teacher.config.pad_token_id,
      max_position_embeddings=teacher.config.max_position_embeddings)
  if student_layers is not None:
    config = config.replace(num_layers=student_layers)
  model = build_model(config, teacher.head, getattr(teacher.model, "num_labels", None))
  # One jitted init: an eager one runs many small compilations (seconds on a CPU).
  params = jax.tree.map(np.asarray, jax.jit(lambda key: init_params(model, key))(
      jax.random.key(seed)))
  return dataclasses.replace(teacher, model=model, params=params, config=config)


def from_bundle(teacher: Bundle, path: str, seed: int) -> Bundle:
  """A bundle (or HF checkpoint) as the student: its encoder, the teacher's head (fresh
  unless the bundle has that very head), its vocabulary checked against the teacher's."""
  student = bert_bundle.load_bert(
      path, read_json(os.path.join(path, "config.json")), head=teacher.head,
      num_labels=getattr(teacher.model, "num_labels", None), labels=teacher.labels, seed=seed)
  if not same_vocabulary(student.tokenizer, teacher.tokenizer):
    raise FlaxbertError(f"{path}: the student's tokenizer differs from the teacher's; a "
                        "student reads the teacher's inputs, so it needs the same vocabulary")
  if student.config.type_vocab_size != teacher.config.type_vocab_size:
    raise FlaxbertError(f"{path}: {student.config.type_vocab_size} segment types, the "
                        f"teacher {teacher.config.type_vocab_size}")
  return dataclasses.replace(student, labels=teacher.labels, tokenizer=teacher.tokenizer)


def same_vocabulary(a, b) -> bool:
  return a.vocab_size == b.vocab_size and all(
      a.id_to_token(i) == b.id_to_token(i) for i in range(a.vocab_size))


def is_bundle(path: str) -> bool:
  """A flaxbert bundle or an HF checkpoint with weights (a directory with only an HF
  config.json is a config: a fresh student)."""
  config = os.path.join(path, "config.json")
  if os.path.isfile(config) and read_json(config).get("format") == FORMAT:
    return True
  return any(os.path.isfile(os.path.join(path, name)) for name in WEIGHT_FILES)


def build_student(teacher: Bundle, student: str | None, student_layers: int | None,
                  seed: int = 0) -> Bundle:
  """The student `--student` / `--student-layers` ask for (see the module docstring)."""
  if student is None:
    layers = student_layers if student_layers is not None else max(
        1, teacher.config.num_layers // 2)
    return from_teacher_layers(teacher, layers)
  if student in PRESETS or student.endswith(".json") or (
      os.path.isdir(student) and not is_bundle(student)):
    return fresh(teacher, student, student_layers, seed)
  if not os.path.isdir(student):
    raise FlaxbertError(f"--student {student}: neither a preset ({', '.join(PRESETS)}), a "
                        "config.json nor a bundle directory")
  if student_layers is not None:
    raise FlaxbertError("--student-layers takes layers of the teacher (or sizes a preset); "
                        "a student bundle keeps its own layers")
  return from_bundle(teacher, student, seed)


# --- general (MLM) distillation -------------------------------------------------------------

def has_mlm_head(path: str) -> bool | None:
  """Whether the bundle or HF checkpoint at `path` says it has an MLM head (its config.json:
  a flaxbert bundle's head, an HF checkpoint's architectures); None when it does not say (an
  HF config without architectures: its weights tell, once loaded)."""
  meta = read_json(os.path.join(path, "config.json"))
  if meta.get("format") == FORMAT:
    return meta.get("head") == "pretraining"
  architectures = meta.get("architectures")
  if not architectures:
    return None
  return any(arch in MLM_ARCHITECTURES for arch in architectures)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def with_teacher_groups(student: Bundle, teacher: Bundle, groups) -> tuple[Bundle, list[str]]:
  """The student with each parameter group of `groups` replaced by the teacher's where every
  tensor of the group has the student's shape; also the names of the groups taken."""
  params = jax.tree.map(np.asarray, student.params)
  taken = []
  for path in groups:
    mine, theirs = _get(params, path), _get(teacher.params, path)
    if jax.tree.structure(mine) == jax.tree.structure(theirs) and all(
        np.shape(a) == np.shape(b) for a, b in zip(jax.tree.leaves(mine),
                                                   jax.tree.leaves(theirs))):
      _get(params, path[:-1])[path[-1]] = jax.tree.map(np.asarray, theirs)
      taken.append("/".join(path))
  return dataclasses.replace(student, params=params), taken


def build_mlm_student(teacher: Bundle, student: str | None, student_layers: int | None,
                      seed: int = 0) -> Bundle:
  """The student of a pretraining teacher (build_student), given the teacher's embeddings and
  MLM and NSP heads where shapes allow when it has no trained ones of its own: a fresh preset
  takes all three (the same hidden width), a bundle without an MLM head the teacher's MLM and
  NSP heads. Layers of the teacher have them already."""
  built = build_student(teacher, student, student_layers, seed)
  if student is None:
    return built
  if os.path.isdir(student) and is_bundle(student):
    if has_mlm_head(student):
      return built
    groups = (MLM, NSP)
  else:
    groups = (EMBEDDINGS, MLM, NSP)
  built, taken = with_teacher_groups(built, teacher, groups)
  if taken:
    log.info("flaxbert: the student takes the teacher's %s", ", ".join(taken))
  return built
