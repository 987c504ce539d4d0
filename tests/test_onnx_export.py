"""ONNX export: the graph built from a bundle's parameters computes what its Linen model does
(float32, every supported head), and its dynamic int8 form stays close, with int8 matmuls."""

import os

import jax
import numpy as np
import onnx
import onnxruntime
import pytest

import flaxbert.serving
from flaxbert import bundle as bundle_lib
from flaxbert.errors import FlaxbertError
from flaxbert.inference import onnx_serving
from flaxbert.inference.onnx_export import export_onnx
from flaxbert.models.factory import build_model, init_params
from conftest import random_batch, run_cli


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


def test_serving_export_with_onnx(tiny_hf, base, tmp_path):
  """`export --serving --onnx --int8`: one directory, model.onnx recorded and checked like
  every file; onnx_serving.load runs it, close to the StableHLO int8 export beside it."""
  bundle_lib.save(str(tmp_path / "bundle"), bundle_lib.load(tiny_hf, head="encoder"))
  rc, out, err = run_cli("export", tmp_path / "bundle", "--serving", "--onnx", "--int8",
                         "--platforms", "cpu", "--out", tmp_path / "srv")
  assert rc == 0, err
  xla = flaxbert.serving.load(str(tmp_path / "srv"))
  served = onnx_serving.load(str(tmp_path / "srv"))
  assert "model.onnx" in served.manifest["files"]
  texts = ["a b c", "hello world " * 5, "x"]
  got = np.stack(served.run_texts(texts, max_length=32, batch_size=2)["pooled"])
  want = np.stack(xla.run_texts(texts, max_length=32, batch_size=2)["pooled"])
  assert got.shape == want.shape == (3, base.config.hidden_size)
  np.testing.assert_allclose(got, want, atol=0.05)   # two int8 schemes of one model
  # The ONNX route needs an export made with --onnx; a changed model.onnx is refused.
  rc, _, err = run_cli("export", tmp_path / "bundle", "--serving", "--platforms", "cpu",
                       "--out", tmp_path / "plain")
  assert rc == 0, err
  with pytest.raises(FlaxbertError, match="has no model.onnx"):
    onnx_serving.load(str(tmp_path / "plain"))
  with open(tmp_path / "srv" / "model.onnx", "r+b") as f:
    f.seek(os.path.getsize(tmp_path / "srv" / "model.onnx") // 2)
    f.write(b"\x00\x01")
  with pytest.raises(FlaxbertError, match="model.onnx: sha256 differs"):
    onnx_serving.load(str(tmp_path / "srv"))
  # A head the ONNX graph lacks: one line, nothing written.
  bundle_lib.save(str(tmp_path / "pre"), base)
  rc, _, err = run_cli("export", tmp_path / "pre", "--serving", "--onnx", "--out",
                       tmp_path / "x")
  assert rc != 0 and err.startswith("flaxbert: error:") and "no 'pretraining' head" in err
  assert not (tmp_path / "x").exists()
