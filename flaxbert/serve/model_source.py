"""What `flaxbert serve` serves: a serving export as it is, or a bundle through its export,
computed by XLA (the StableHLO module) or by onnxruntime (the export's model.onnx).

A bundle (or HF BERT checkpoint) is exported with `export_serving` into a private temporary
directory, loaded, and the directory removed at once (the loaded model holds everything in
memory), so a bundle and its export answer alike and nothing is left behind, even after a
kill; `int8` applies to that export.

Backends. "xla" runs the StableHLO module, on whatever platform jax runs on. "onnx" runs
model.onnx with onnxruntime: on CPUs the fast route, int8 above all (all-MiniLM-L6-v2, 2
cores, batch 1 x 128 tokens: onnxruntime's int8 1.9-2.3x the float32 module, XLA's own int8
only 1.2-1.3x; bench/inference_latency.py). "auto" takes onnx on a CPU when the export holds
model.onnx (a bundle: when its head has an ONNX form, and then the export gets one), and xla
otherwise: on GPUs and TPUs, and for heads the ONNX export lacks (fill-mask).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import jax

from flaxbert import bundle as bundle_lib
from flaxbert.errors import FlaxbertError
from flaxbert.inference import onnx_export, onnx_serving
from flaxbert.inference.serving import ServingModel, export_serving, load
from flaxbert.inference.serving_manifest import MANIFEST_FILE, ONNX_FILE
from flaxbert.serve.answers import HEADS

BACKENDS = ("auto", "xla", "onnx")


def _use_onnx(backend: str, has_onnx: bool, where: str) -> bool:
  if backend not in BACKENDS:
    raise FlaxbertError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
  if backend == "onnx" and not has_onnx:
    raise FlaxbertError(f"{where}: no ONNX form to serve with --backend onnx")
  return backend == "onnx" or (backend == "auto" and has_onnx
                               and jax.default_backend() == "cpu")


def open_model(path: str, *, int8: bool = False, backend: str = "auto") -> ServingModel:
  """A serving export directory loaded, or a bundle (or HF BERT checkpoint) exported and
  loaded; an `onnx_serving.OnnxServingModel` when the backend is onnx."""
  if not os.path.isdir(path):
    raise FlaxbertError(f"{path}: no such serving export or bundle directory")
  if os.path.isfile(os.path.join(path, MANIFEST_FILE)):
    if int8:
      raise FlaxbertError(f"{path}: a serving export is served as exported; --int8 applies "
                          "to a bundle (or export it with `flaxbert export --serving --int8`)")
    has_onnx = ONNX_FILE in os.listdir(path)
    where = f"{path} (export it with `flaxbert export BUNDLE --serving --onnx`)"
    return onnx_serving.load(path) if _use_onnx(backend, has_onnx, where) else load(path)
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise FlaxbertError(f"{path}: neither a serving export ({MANIFEST_FILE}) nor a bundle "
                        "(config.json)")
  bundle = bundle_lib.load(path)
  if bundle.head not in HEADS:
    raise FlaxbertError(f"{path}: cannot serve a {bundle.head!r} bundle (served heads: "
                        f"{', '.join(HEADS)})")
  onnx = _use_onnx(backend, bundle.head in onnx_export.HEADS,
                   f"{path} (a {bundle.head!r} head)")
  scratch = tempfile.mkdtemp(prefix="flaxbert-serve-")
  try:
    export = os.path.join(scratch, "export")
    if onnx:
      export_serving(bundle, export, int8=int8, extra_files=onnx_serving.onnx_files(bundle, int8))
      return onnx_serving.load(export)
    export_serving(bundle, export, int8=int8)
    return load(export)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
