"""Serving export: a bundle's inference function as serialized StableHLO (`jax.export`).

    DIR/model.stablehlo   jax.export serialization of f(params, input_ids, segment_ids,
                          input_mask) -> {output name: array}
                          (flaxbert.inference.serving_function); batch and sequence length
                          are symbolic ("b", "s", with s <= the model's positions); lowered
                          for cpu, cuda and tpu at once (the manifest's `platforms`)
    DIR/params.npz        the parameters, flat {"bert/embeddings/...": array}, one entry per
                          encoder layer ("bert/encoder/layers/0/..."); with --int8 the dense
                          kernels and embedding tables are int8 plus ":scale" arrays, and f
                          runs int8 x int8 -> int32 matmuls (flaxbert.inference.quantize)
    DIR/model.onnx        with --onnx: the same function for onnxruntime (float32, or with
                          --int8 its dynamic int8 form), flaxbert.inference.onnx_serving
    DIR/tokenizer/        the bundle's tokenizer
    DIR/manifest.json     inputs, outputs, dtypes, head, labels, int8, jax version, and the
                          size and sha256 of every file (flaxbert.inference.serving_manifest)

Parameters are inputs of the exported function, stored next to it, not constants baked into
the module: XLA would constant-fold int8 weights back to float32 while compiling (slow, and
float32 in memory), large constants make the serialized module slow to write and
read, and one module of ~100 kB can be inspected on its own. The directory is still
self-contained.

`load(DIR)` needs only jax, numpy and the tokenizer: no flaxbert model code (and no flax). It
checks the directory is exactly what was exported (manifest fields and digest, file sizes and
sha256, parameters against the function's signature): a tampered or truncated export is a
one-line FlaxbertError naming the file, never another exception, never silently accepted.
"""

from __future__ import annotations

import os
import zipfile

import jax
import numpy as np
from jax import export as jax_export

from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError
from flaxbert.inference import bucketing, quantize, serving_function
from flaxbert.inference import serving_manifest as manifest_lib
from flaxbert.inference.serving_manifest import (FORMAT, FORMAT_VERSION, MANIFEST_FILE,
                                                 MODULE_FILE, PARAMS_FILE, TOKENIZER_DIR)
from flaxbert.jsonfile import read_json, write_json
from flaxbert.output_dir import check_new, new_directory


def inference_dtype(backend: str | None = None) -> str:
  """bfloat16 on accelerators (GPU/TPU matmul units run it at full rate), float32 on CPU
  (where bfloat16 matmuls are emulated and slower)."""
  backend = backend or jax.default_backend()
  return "bfloat16" if backend in ("gpu", "cuda", "rocm", "tpu") else "float32"


PLATFORMS = ("cpu", "cuda", "tpu")


def export_serving(bundle, directory: str, *, int8: bool = False, dtype: str | None = None,
                   platforms=PLATFORMS, extra_files=None) -> dict:
  """Writes the serving directory of `bundle` (any head) atomically; returns its manifest.
  One module, lowered for every platform in `platforms`; `load` runs it on the platform jax
  runs on (the manifest's `platforms` must include it). `extra_files`: {name: write(path)}
  for further files of the export (model.onnx: flaxbert.inference.onnx_serving), written
  into the directory before the manifest records every file."""
  directory = check_new(directory)   # before the export's minutes of work, and again below
  compute_dtype = dtype or inference_dtype()
  config = bundle.config
  float_flat = serving_function.unstack_layers(
      quantize.flatten(jax.tree.map(np.asarray, bundle.params)), config.num_layers)
  stored = quantize.quantize(float_flat) if int8 else float_flat
  serve = serving_function.make_serving_function(
      config, bundle.head, compute_dtype,
      all_layers=bool(getattr(bundle.model, "all_layers", False)))

  max_length = config.max_position_embeddings
  b, s = jax_export.symbolic_shape("b, s", constraints=(f"s <= {max_length}",))
  token_spec = jax.ShapeDtypeStruct((b, s), np.int32)
  param_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in stored.items()}
  try:
    exported = jax_export.export(jax.jit(serve), platforms=tuple(platforms))(
        param_spec, token_spec, token_spec, token_spec)
  except ValueError as e:    # an unknown platform name
    raise FlaxbertError(f"cannot export for platforms {list(platforms)}: "
                        f"{str(e).splitlines()[0]}") from None

  with new_directory(directory) as tmp:
    with open(os.path.join(tmp, MODULE_FILE), "wb") as f:
      f.write(exported.serialize())
    np.savez(os.path.join(tmp, PARAMS_FILE), **stored)
    bundle.tokenizer.save(os.path.join(tmp, TOKENIZER_DIR))
    for name, write in (extra_files or {}).items():
      write(os.path.join(tmp, name))
    params_report = {"parameters": int(sum(np.size(v) for v in float_flat.values())),
                     "stored_bytes": quantize.nbytes(stored),
                     **(quantize.size_report(float_flat, stored) if int8 else {})}
    manifest = _manifest(bundle, exported, int8, compute_dtype, max_length, params_report,
                         manifest_lib.file_records(tmp))
    write_json(os.path.join(tmp, MANIFEST_FILE), manifest)
  return manifest


def _manifest(bundle, exported, int8, compute_dtype, max_length, params_report,
              files) -> dict:
  manifest = {
      "format": FORMAT, "format_version": FORMAT_VERSION,
      "head": bundle.head, "labels": bundle.labels,
      "num_labels": getattr(bundle.model, "num_labels", None),
      "int8": bool(int8), "compute_dtype": compute_dtype,
      "jax_version": jax.__version__, "platforms": list(exported.platforms),
      "max_length": max_length,
      "inputs": manifest_lib.describe_inputs(exported),
      "outputs": manifest_lib.describe_outputs(exported),
      "files": files,
      "params": params_report,
      # What `flaxbert serve` needs to answer as predict / embed answer for the bundle: its
      # sentence-transformers pooling default and its fine-tune's task settings (or null).
      "sentence_embedding": bundle.sentence_embedding,
      "task_settings": bundle.task_settings,
  }
  manifest[manifest_lib.DIGEST_FIELD] = manifest_lib.manifest_digest(manifest)
  return manifest


class ServingModel:
  """A loaded serving directory: `model(input_ids, segment_ids, input_mask)` -> outputs."""

  def __init__(self, directory: str):
    if not os.path.isdir(directory):
      raise FlaxbertError(f"{directory}: no such serving directory")
    manifest_path = os.path.join(directory, MANIFEST_FILE)
    self.manifest = read_json(manifest_path)
    manifest_lib.check_fields(self.manifest, manifest_path)
    manifest_lib.check_files(directory, self.manifest)
    module_path = os.path.join(directory, MODULE_FILE)
    with open(module_path, "rb") as f:
      try:
        self.exported = jax_export.deserialize(bytearray(f.read()))
      except Exception as e:  # a foreign or truncated file; jax raises assorted types
        raise FlaxbertError(f"{module_path}: cannot deserialize "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    manifest_lib.check_signature(self.manifest, self.exported, manifest_path)
    params_path = os.path.join(directory, PARAMS_FILE)
    arrays = _read_npz(params_path)
    manifest_lib.check_params(arrays, self.exported, params_path)
    self.params = {k: jax.device_put(v) for k, v in arrays.items()}
    self.tokenizer = load_tokenizer(os.path.join(directory, TOKENIZER_DIR))
    self.head = self.manifest.get("head")
    self.labels = self.manifest.get("labels")
    self.max_length = int(self.manifest["max_length"])
    self.per_token = tuple(o["name"] for o in self.manifest["outputs"]
                           if o["shape"][:2] == ["b", "s"])
    self._call = jax.jit(self.exported.call)

  def __call__(self, input_ids, segment_ids=None, input_mask=None) -> dict[str, np.ndarray]:
    input_ids = np.asarray(input_ids, np.int32)
    if input_ids.ndim != 2:
      raise FlaxbertError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    if input_ids.shape[1] > self.max_length:
      raise FlaxbertError(f"inputs of {input_ids.shape[1]} tokens exceed the model's "
                          f"{self.max_length} positions")
    segment_ids = np.zeros_like(input_ids) if segment_ids is None else segment_ids
    input_mask = np.ones_like(input_ids) if input_mask is None else input_mask
    out = self._call(self.params, input_ids, np.asarray(segment_ids, np.int32),
                     np.asarray(input_mask, np.int32))
    return {k: np.asarray(v) for k, v in out.items()}

  def run_rows(self, rows, *, batch_size: int = 32, buckets=None) -> dict[str, list]:
    """Outputs per row (unpadded dicts of input_ids/segment_ids/input_mask), in input order,
    with length-bucketed batching."""
    buckets = buckets or bucketing.default_buckets(self.max_length)
    return bucketing.run_bucketed(lambda batch: self(**batch), rows, batch_size, buckets,
                                  per_token=self.per_token,
                                  pad_values={"input_ids": self.tokenizer.pad_id})

  def run_texts(self, texts, *, max_length: int = 128, batch_size: int = 32) -> dict[str, list]:
    """Texts (str, or (text_a, text_b) pairs) -> outputs per text, in input order."""
    pairs = [(t, None) if isinstance(t, str) else tuple(t) for t in texts]
    rows = self.tokenizer.encode_inputs(pairs, min(max_length, self.max_length))
    return self.run_rows(rows, batch_size=batch_size)


def _read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path) as stored:   # allow_pickle stays False: arrays only, no code
      return {k: stored[k] for k in stored.files}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
    raise FlaxbertError(f"{path}: not a readable .npz of arrays "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def load(directory: str) -> ServingModel:
  """Loads a serving directory written by `export_serving` (`flaxbert export --serving`)."""
  return ServingModel(directory)
