"""Serving export: jax.export StableHLO of every head equals the bundle on fresh inputs of
several batch sizes and lengths; one module serves cpu, cuda and tpu; int8 exports run int8 x
int8 -> int32 matmuls close to float32; `flaxbert.serving.load` runs without flaxbert model
code."""

import re

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import flaxbert.serving
from flaxbert.errors import FlaxbertError
from flaxbert import bundle as bundle_lib
from flaxbert.inference.serving import export_serving
from flaxbert.models.factory import build_model, init_params
from conftest import REPO, random_batch, run_cli

HEADS = [("encoder", None), ("classification", 3), ("tagging", 5), ("span_qa", None),
         ("pretraining", None)]


@pytest.fixture(scope="module")
def base(tiny_hf):
  return bundle_lib.load(tiny_hf)


def with_head(base, head, num_labels, labels=None):
  """The base bundle re-headed (fresh head, same encoder); initialised under jit, which is
  much faster than bundle.rehead's eager init on these shared CPUs."""
  model = build_model(base.config, head, num_labels)
  params = dict(jax.jit(lambda: init_params(model, jax.random.key(1)))())
  params["bert"] = base.params["bert"]
  return bundle_lib.Bundle(model, params, base.tokenizer, base.config, head, labels)


def bundle_outputs(bundle, ids, segments, mask):
  out = jax.jit(bundle.model.apply)({"params": bundle.params}, ids, segments, mask)
  return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("head,num_labels", HEADS)
def test_export_equals_bundle_on_fresh_inputs(base, tmp_path, head, num_labels):
  bundle = with_head(base, head, num_labels)
  manifest = export_serving(bundle, str(tmp_path / "srv"))
  assert manifest["head"] == head and not manifest["int8"]
  assert manifest["compute_dtype"] == "float32"  # CPU
  assert {i["name"] for i in manifest["inputs"]} == {"input_ids", "segment_ids", "input_mask"}
  served = flaxbert.serving.load(str(tmp_path / "srv"))
  assert {o["name"] for o in manifest["outputs"]} == set(
      bundle_outputs(bundle, *random_batch(np.random.default_rng(0), 1, 4, 1000)))
  rng = np.random.default_rng(hash(head) % 1000)
  # One exported module serves every batch size and sequence length (symbolic b and s).
  shapes = ((1, 5), (9, 64)) if head == "encoder" else ((4, 23),)
  for batch, length in shapes:
    ids, segments, mask = (x.astype(np.int32) for x in random_batch(rng, batch, length, 1000))
    want = bundle_outputs(bundle, ids, segments, mask)
    got = served(ids, segments, mask)
    assert set(got) == set(want)
    for name in want:
      assert got[name].shape == want[name].shape
      np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_manifest_and_symbolic_shapes(base, tmp_path):
  bundle = with_head(base, "tagging", 4, list("ABCD"))
  export_serving(bundle, str(tmp_path / "srv"))
  with open(tmp_path / "srv" / "manifest.json") as f:
    manifest = json.load(f)
  assert manifest["labels"] == list("ABCD") and manifest["num_labels"] == 4
  assert manifest["outputs"] == [{"name": "logits", "dtype": "float32",
                                  "shape": ["b", "s", "4"]}]
  assert manifest["max_length"] == 64 and manifest["jax_version"]
  # One artefact for every backend: the module is lowered for cpu, cuda and tpu; it runs here.
  assert manifest["platforms"] == ["cpu", "cuda", "tpu"]
  assert sorted(os.listdir(tmp_path / "srv")) == ["manifest.json", "model.stablehlo",
                                                  "params.npz", "tokenizer"]
  served = flaxbert.serving.load(str(tmp_path / "srv"))
  assert served.exported.platforms == ("cpu", "cuda", "tpu")
  with pytest.raises(FlaxbertError, match="exceed the model's 64 positions"):
    served(np.zeros((1, 65), np.int32))
  with pytest.raises(FlaxbertError, match="already exists"):
    export_serving(bundle, str(tmp_path / "srv"))


INT8_DOT = re.compile(r"stablehlo\.dot_general.*: \(tensor<[^>]*xi8>, tensor<[^>]*xi8>\) -> "
                      r"tensor<[^>]*xi32>")
FLOAT_DOT = re.compile(r"stablehlo\.dot_general.*: \(tensor<[^>]*xf32>, tensor<[^>]*xf32>\)")


def test_int8_export_close_to_float(base, tmp_path):
  """The pretraining head covers every int8 path: embeddings, the encoder's four matmuls per
  layer, pooler, MLM transform, the tied decoder (against the int8 word table) and NSP; lowered
  for all three platforms, run on the CPU."""
  bundle = with_head(base, "pretraining", None)
  manifest = export_serving(bundle, str(tmp_path / "srv"), int8=True)
  assert manifest["int8"] and manifest["platforms"] == ["cpu", "cuda", "tpu"]
  params = manifest["params"]
  assert params["quantized_tables"] == 3 and params["int8_parameter_share"] > 0.95
  assert params["reduction"] > 3.0, params   # float32 -> int8 plus small scales
  served = flaxbert.serving.load(str(tmp_path / "srv"))
  module = served.exported.mlir_module()
  layers = bundle.config.num_layers
  # Every dense matmul is int8 x int8 -> int32 (4 per layer, pooler, MLM transform, decoder,
  # NSP); only attention's two per layer stay float. jax lowers each dot once per platform
  # (a stablehlo.case on the platform index), so each of the 3 platforms has its own copy.
  assert len(INT8_DOT.findall(module)) == 3 * (4 * layers + 4)
  assert len(FLOAT_DOT.findall(module)) == 3 * 2 * layers
  ids, segments, mask = (x.astype(np.int32) for x in
                         random_batch(np.random.default_rng(7), 3, 21, 1000))
  want, got = bundle_outputs(bundle, ids, segments, mask), served(ids, segments, mask)
  for name in want:
    # Relative error of the whole output: int8 rounding, not a different function (measured:
    # mlm 0.016, nsp 0.037 -- 6 logits near zero from a random head -- at this seed; a wrong
    # scale or a float path would be off by far more).
    error = np.linalg.norm(got[name] - want[name]) / np.linalg.norm(want[name])
    assert error < 0.06, (name, error)
  assert np.mean(got["mlm_logits"].argmax(-1) == want["mlm_logits"].argmax(-1)) > 0.9


def test_load_runs_without_model_code(base, tmp_path):
  """A fresh process loads the export, tokenizes and runs texts (bucketed) with jax alone:
  neither flax nor flaxbert's model modules get imported, and outputs equal the bundle's."""
  bundle = with_head(base, "classification", 2)
  export_serving(bundle, str(tmp_path / "srv"))
  texts = ["abc de fg", "a", "hello world " * 9, "zz yy"]
  script = (
      "import sys, numpy as np, flaxbert.serving\n"
      f"m = flaxbert.serving.load({str(tmp_path / 'srv')!r})\n"
      f"out = m.run_texts({texts!r}, max_length=32, batch_size=3)\n"
      f"np.save({str(tmp_path / 'logits.npy')!r}, np.stack(out['logits']))\n"
      "bad = [k for k in sys.modules if k == 'flax' or k.startswith('flax.')"
      " or k in ('flaxbert.models.bert', 'flaxbert.models.heads', 'flaxbert.models.factory')]\n"
      "assert not bad, bad\n")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": REPO}, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = np.load(tmp_path / "logits.npy")
  from flaxbert.inference.embed import encode_rows
  ids, segments, mask = encode_rows(bundle.tokenizer, [(t, None) for t in texts], 32)
  np.testing.assert_allclose(got, bundle_outputs(bundle, ids, segments, mask)["logits"],
                             rtol=1e-5, atol=1e-5)


def test_cli_export_serving(base, tmp_path):
  bundle = with_head(base, "span_qa", None)
  bundle_lib.save(str(tmp_path / "bundle"), bundle)
  rc, out, err = run_cli("export", tmp_path / "bundle", "--serving", "--int8",
                         "--platforms", "cpu", "--out", tmp_path / "srv")
  assert rc == 0, err
  assert "wrote serving export" in out and "int8" in out
  served = flaxbert.serving.load(str(tmp_path / "srv"))
  assert served.manifest["int8"] and served.head == "span_qa"
  assert served.manifest["platforms"] == ["cpu"] and served.exported.platforms == ("cpu",)
  assert served.manifest["params"]["reduction"] > 1.5
  ids, segments, mask = (x.astype(np.int32) for x in
                         random_batch(np.random.default_rng(5), 3, 17, 1000))
  want, got = bundle_outputs(bundle, ids, segments, mask), served(ids, segments, mask)
  np.testing.assert_allclose(got["start_logits"], want["start_logits"], atol=0.05)
  # Errors are one line with exit status 2.
  rc, _, err = run_cli("export", tmp_path / "bundle", "--int8", "--out", tmp_path / "x")
  assert rc == 2 and err.startswith("flaxbert: error:") and "--serving" in err
  (tmp_path / "notserving").mkdir()
  (tmp_path / "notserving" / "manifest.json").write_text("{}")
  with pytest.raises(FlaxbertError, match="not a flaxbert serving manifest"):
    flaxbert.serving.load(str(tmp_path / "notserving"))
  # An export of an older format (stacked layer parameters) is refused in one line.
  manifest = json.loads((tmp_path / "srv" / "manifest.json").read_text())
  (tmp_path / "srv" / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))
  with pytest.raises(FlaxbertError, match="format_version 2; this flaxbert reads version 3"):
    flaxbert.serving.load(str(tmp_path / "srv"))
