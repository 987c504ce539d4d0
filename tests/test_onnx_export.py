"""ONNX export: the graph built from a bundle's parameters computes what its Linen model does
(float32, every supported head), and its dynamic int8 form stays close, with int8 matmuls."""

import jax
import numpy as np
import onnx
import onnxruntime
import pytest

from flaxbert import bundle as bundle_lib
from flaxbert.errors import FlaxbertError
from flaxbert.inference.onnx_export import export_onnx
from flaxbert.models.factory import build_model, init_params
from conftest import random_batch


@pytest.fixture(scope="module")
def base(tiny_hf):
  return bundle_lib.load(tiny_hf)   # a pretraining checkpoint: the pretraining head


def with_head(base, head, num_labels):
  model = build_model(base.config, head, num_labels)
  params = dict(jax.jit(lambda: init_params(model, jax.random.key(2)))())
  params["bert"] = base.params["bert"]
  return bundle_lib.Bundle(model, params, base.tokenizer, base.config, head, None)


def run(path, ids, segments, mask):
  session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]
  feeds = {"input_ids": ids, "segment_ids": segments, "input_mask": mask}
  return dict(zip(names, session.run(names, feeds)))


# encoder: the bare graph (and its int8 form); span_qa: a per-token head split in two outputs.
# (classification and tagging differ from these only in which vector feeds the dense head.)
@pytest.mark.parametrize("head,num_labels", [("encoder", None), ("span_qa", None)])
def test_onnx_equals_bundle(tiny_hf, base, tmp_path, head, num_labels):
  bundle = (bundle_lib.load(tiny_hf, head="encoder") if head == "encoder"
            else with_head(base, head, num_labels))
  ids, segments, mask = (x.astype(np.int32) for x in
                         random_batch(np.random.default_rng(3), 3, 19, 1000))
  want = {k: np.asarray(v) for k, v in
          jax.jit(bundle.model.apply)({"params": bundle.params}, ids, segments, mask).items()}
  got = run(export_onnx(bundle, str(tmp_path / "m.onnx")), ids, segments, mask)
  assert set(got) == set(want)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4, err_msg=name)
  if head != "encoder":
    return
  path = export_onnx(bundle, str(tmp_path / "m8.onnx"), int8=True)
  ops = {node.op_type for node in onnx.load(path).graph.node}
  assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops or "DynamicQuantizeMatMul" in ops, ops
  got = run(path, ids, segments, mask)
  for name in want:
    error = np.linalg.norm(got[name] - want[name]) / np.linalg.norm(want[name])
    assert error < 0.06, (name, error)


def test_onnx_refuses_pretraining_head(base, tmp_path):
  assert base.head == "pretraining"
  with pytest.raises(FlaxbertError, match="no 'pretraining' head"):
    export_onnx(base, str(tmp_path / "m.onnx"))
