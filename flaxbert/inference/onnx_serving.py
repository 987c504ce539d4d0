"""A serving export's model.onnx run by onnxruntime: `load(DIR)` is `flaxbert.serving.load`
with onnxruntime computing the outputs instead of XLA.

`flaxbert export BUNDLE --serving --onnx [--int8] --out DIR` writes model.onnx
(flaxbert.inference.onnx_export; with --int8 its onnxruntime dynamic int8 form) next to the
StableHLO module, recorded in the manifest like every other file. On CPUs this is the fast int8
route: onnxruntime's int8 matmuls (uint8 activations x int8 weights) run MiniLM 1.5-1.8x faster
than XLA's int8 StableHLO (bench/inference_latency.py). Loading runs every check of
`flaxbert.serving.load` (manifest, sizes, sha256 of every file, model.onnx's included), then
checks the ONNX model's outputs are the export's.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime

from flaxbert.errors import FlaxbertError
from flaxbert.inference.onnx_export import export_onnx
from flaxbert.inference.serving import ServingModel
from flaxbert.inference.serving_manifest import ONNX_FILE


def onnx_files(bundle, int8: bool) -> dict:
  """`export_serving(extra_files=...)` for model.onnx."""
  return {ONNX_FILE: lambda path: export_onnx(bundle, path, int8=int8)}


class OnnxServingModel(ServingModel):
  """A loaded serving directory whose calls run its model.onnx with onnxruntime."""

  def __init__(self, directory: str, threads: int | None = None):
    super().__init__(directory)    # every check of the export, model.onnx's sha256 included
    if ONNX_FILE not in self.manifest["files"]:
      raise FlaxbertError(f"{directory}: this serving export has no {ONNX_FILE} (export it "
                          "with `flaxbert export BUNDLE --serving --onnx`)")
    options = onnxruntime.SessionOptions()
    if threads:
      options.intra_op_num_threads = threads
    path = os.path.join(directory, ONNX_FILE)
    try:
      self.session = onnxruntime.InferenceSession(path, options,
                                                  providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own assorted types
      raise FlaxbertError(f"{path}: onnxruntime cannot load it "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
          from None
    self.output_names = [o.name for o in self.session.get_outputs()]
    want = sorted(o["name"] for o in self.manifest["outputs"])
    if sorted(self.output_names) != want:
      raise FlaxbertError(f"{path}: outputs {sorted(self.output_names)} differ from the "
                          f"export's {want}")
    self._call = self._run

  def onnx_outputs(self, input_ids, segment_ids, input_mask) -> dict[str, np.ndarray]:
    """{output name: array} of model.onnx on int32 [batch, length] inputs."""
    values = self.session.run(self.output_names, {
        "input_ids": input_ids, "segment_ids": segment_ids, "input_mask": input_mask})
    return dict(zip(self.output_names, values))

  def _run(self, params, input_ids, segment_ids, input_mask) -> dict[str, np.ndarray]:
    del params   # inside model.onnx
    return self.onnx_outputs(input_ids, segment_ids, input_mask)


def load(directory: str, threads: int | None = None) -> OnnxServingModel:
  return OnnxServingModel(directory, threads)
