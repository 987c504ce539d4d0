"""Faults in the artefacts flaxbert reads and writes are one clear error, and nothing a user made
is lost: `convert --to-hf` beside a user's `X.partial`, `tokenizer train` onto an existing
tokenizer, an HF checkpoint with a wrong-shaped per-layer tensor, and tampered or truncated
serving exports."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import flaxbert
import flaxbert.serving
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert import bundle as bundle_lib
from flaxbert.errors import FlaxbertError
from flaxbert.inference.serving import export_serving
from flaxbert.inference.serving_manifest import manifest_digest, sha256_file
from flaxbert.models.factory import build_model, init_params
from conftest import random_batch, run_cli, snapshot

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def classifier(tiny_hf):
  """The tiny checkpoint with a 3-label classification head (initialised under jit: much
  faster than eager init on these CPUs)."""
  base = bundle_lib.load(tiny_hf)
  model = build_model(base.config, "classification", len(LABELS))
  params = dict(jax.jit(lambda: init_params(model, jax.random.key(1)))())
  params["bert"] = base.params["bert"]
  return bundle_lib.Bundle(model, params, base.tokenizer, base.config, "classification",
                           LABELS)


def assert_one_line_error(rc, err, *fragments):
  assert rc == 2, err
  assert err.startswith("flaxbert: error:") and err.count("\n") == 1, err
  assert "Traceback" not in err
  for fragment in fragments:
    assert fragment in err, (fragment, err)


# --- convert --to-hf: the user's X.partial survives; a non-empty X is refused ------------------

def test_convert_to_hf_keeps_users_partial_and_refuses_nonempty_out(classifier, tmp_path):
  bundle_lib.save(str(tmp_path / "bundle"), classifier)
  out = tmp_path / "hf"
  (tmp_path / "hf.partial").mkdir()
  (tmp_path / "hf.partial" / "notes.txt").write_text("the user's own work")
  rc, stdout, err = run_cli("convert", "--to-hf", tmp_path / "bundle", "--out", out)
  assert rc == 0, err
  assert (tmp_path / "hf.partial" / "notes.txt").read_text() == "the user's own work"
  assert {"config.json", "model.safetensors", "vocab.txt"} <= set(os.listdir(out))
  assert json.loads((out / "config.json").read_text())["id2label"]["2"] == "positive"
  assert sorted(os.listdir(tmp_path)) == ["bundle", "hf", "hf.partial"]  # no temp left over

  before = snapshot(out)
  rc, _, err = run_cli("convert", "--to-hf", tmp_path / "bundle", "--out", out)
  assert_one_line_error(rc, err, str(out), "already exists and is not empty")
  assert snapshot(out) == before
  assert sorted(os.listdir(tmp_path)) == ["bundle", "hf", "hf.partial"]


# --- tokenizer train: refuses an existing tokenizer; writes atomically -------------------------

def test_tokenizer_train_refuses_existing_dir_and_writes_atomically(classifier, tmp_path):
  rng = np.random.default_rng(0)
  words = ["".join(rng.choice(list("abcdefghij"), size=rng.integers(2, 7))) for _ in range(300)]
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(" ".join(rng.choice(words, size=12)) for _ in range(800)) + "\n")
  # A bundle's tokenizer/ (WordPiece) as the --output: refused before any training.
  existing = tmp_path / "bundle" / "tokenizer"
  classifier.tokenizer.save(str(existing))
  before = snapshot(tmp_path / "bundle")
  rc, _, err = run_cli("tokenizer", "train", "--input", corpus, "--vocab-size", 300,
                       "--output", existing)
  assert_one_line_error(rc, err, str(existing), "already exists and is not empty", "--output")
  assert snapshot(tmp_path / "bundle") == before
  assert sorted(os.listdir(tmp_path / "bundle")) == ["tokenizer"]

  (tmp_path / "tok.partial").mkdir()
  (tmp_path / "tok.partial" / "keep").write_text("mine")
  rc, stdout, err = run_cli("tokenizer", "train", "--input", corpus, "--vocab-size", 300,
                            "--output", tmp_path / "tok")
  assert rc == 0, err
  assert "300 pieces" in stdout
  assert sorted(os.listdir(tmp_path / "tok")) == ["spm.model", "tokenizer_config.json"]
  assert (tmp_path / "tok.partial" / "keep").read_text() == "mine"
  assert sorted(os.listdir(tmp_path)) == ["bundle", "corpus.txt", "tok", "tok.partial"]
  tokenizer = load_tokenizer(str(tmp_path / "tok"))
  assert tokenizer.vocab_size == 300 and tokenizer.decode(tokenizer.encode(words[0])) == words[0]


# --- HF checkpoint with one wrong-shaped per-layer tensor ---------------------------------------

def test_hf_wrong_shaped_layer_tensor_is_one_line(tiny_hf, tmp_path):
  broken = tmp_path / "broken_hf"
  shutil.copytree(tiny_hf, broken)
  path = broken / "model.safetensors"
  tensors = load_file(str(path))
  name = "bert.encoder.layer.1.intermediate.dense.weight"
  assert tensors[name].shape == (200, 96)
  tensors[name] = np.zeros((199, 96), np.float32)
  save_file(tensors, str(path), metadata={"format": "pt"})

  fragments = (str(path), name, "(199, 96)", "(200, 96)")
  with pytest.raises(FlaxbertError) as info:
    flaxbert.load(str(broken))
  message = str(info.value)
  assert "\n" not in message and all(f in message for f in fragments), message

  rc, _, err = run_cli("convert", "--from-hf", broken, "--out", tmp_path / "bundle")
  assert_one_line_error(rc, err, *fragments)
  assert not (tmp_path / "bundle").exists()
  assert sorted(os.listdir(tmp_path)) == ["broken_hf"]


# --- serving exports: tampering and truncation are one line, never accepted --------------------

@pytest.fixture(scope="module")
def served(classifier, tmp_path_factory):
  """ONE export shared by the serving cases (each copies it), with its outputs on a batch."""
  root = tmp_path_factory.mktemp("serving")
  # A user's srv.partial beside the output: the export must leave it alone.
  (root / "srv.partial").mkdir()
  (root / "srv.partial" / "keep").write_text("mine")
  export_serving(classifier, str(root / "srv"))
  assert (root / "srv.partial" / "keep").read_text() == "mine"
  assert sorted(os.listdir(root)) == ["srv", "srv.partial"]
  batch = tuple(x.astype(np.int32) for x in random_batch(np.random.default_rng(7), 3, 11, 1000))
  outputs = flaxbert.serving.load(str(root / "srv"))(*batch)
  return str(root / "srv"), batch, outputs


def read_manifest(directory):
  with open(os.path.join(directory, "manifest.json")) as f:
    return json.load(f)


def write_manifest(directory, manifest, *, redigest=False):
  if redigest:
    manifest["manifest_sha256"] = manifest_digest(manifest)
  with open(os.path.join(directory, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)


def edit_manifest(edit):
  def tamper(directory):
    manifest = read_manifest(directory)
    edit(manifest)
    write_manifest(directory, manifest)
  return tamper


def truncate_params(directory):
  path = os.path.join(directory, "params.npz")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def rewrite_params(directory, change, *, update_manifest):
  path = os.path.join(directory, "params.npz")
  with np.load(path) as stored:
    arrays = {k: stored[k] for k in stored.files}
  change(arrays)
  size = os.path.getsize(path)
  np.savez(path, **arrays)
  if update_manifest:   # as a careful tamperer would: sizes, sha256 and digest all agree
    manifest = read_manifest(directory)
    manifest["files"]["params.npz"] = {"bytes": os.path.getsize(path),
                                       "sha256": sha256_file(path)}
    write_manifest(directory, manifest, redigest=True)
  else:
    assert os.path.getsize(path) == size  # so the sha256 check, not the size check, fires


def wrong_shape(arrays):
  arrays["classifier/dense/bias"] = np.zeros(4, np.float32)


def changed_weight(arrays):
  kernel = arrays["bert/encoder/layers/1/output/kernel"]   # one entry per layer (format 3)
  kernel[2, 3] += 0.5


def pop(field):
  return lambda manifest: manifest.pop(field)


def setter(field, value):
  return lambda manifest: manifest.__setitem__(field, value)


CASES = {
    "max_length_missing": (edit_manifest(pop("max_length")),
                           r"manifest\.json: max_length: missing$"),
    "max_length_a_string": (edit_manifest(setter("max_length", "64")),
                            r"manifest\.json: max_length: expected a positive integer, got '64'"),
    "outputs_missing": (edit_manifest(pop("outputs")), r"manifest\.json: outputs: missing$"),
    "outputs_malformed": (edit_manifest(setter("outputs", [{"name": "logits"}])),
                          r"outputs\[0\]\.dtype: expected a string.*outputs\[0\]\.shape"),
    "labels_reordered": (edit_manifest(lambda m: m["labels"].reverse()),
                         r"manifest\.json: content differs from its manifest_sha256"),
    "params_truncated": (truncate_params,
                         r"params\.npz: \d+ bytes, the manifest records \d+ \(truncated"),
    "params_wrong_shape": (
        lambda d: rewrite_params(d, wrong_shape, update_manifest=True),
        r"params\.npz: classifier/dense/bias is float32\[4\] but the exported function takes "
        r"float32\[3\]"),
    "params_weight_changed": (
        lambda d: rewrite_params(d, changed_weight, update_manifest=False),
        r"params\.npz: sha256 differs from the manifest's"),
    "tokenizer_file_added": (
        lambda d: open(os.path.join(d, "tokenizer", "spm.model"), "wb").close(),
        r"tokenizer/spm\.model: not recorded in the manifest"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_serving_export_is_one_line_error(served, tmp_path, case):
  directory, _, _ = served
  tamper, pattern = CASES[case]
  copy = str(tmp_path / "srv")
  shutil.copytree(directory, copy)
  tamper(copy)
  with pytest.raises(FlaxbertError, match=pattern) as info:
    flaxbert.serving.load(copy)
  assert "\n" not in str(info.value) and copy in str(info.value)


def test_untampered_copy_loads_and_records_every_file(served, tmp_path):
  directory, batch, outputs = served
  copy = str(tmp_path / "srv")
  shutil.copytree(directory, copy)
  model = flaxbert.serving.load(copy)
  assert model.labels == LABELS and model.max_length == 64
  got = model(*batch)
  assert set(got) == set(outputs) == {"logits"}
  np.testing.assert_array_equal(got["logits"], outputs["logits"])
  manifest = read_manifest(copy)
  assert sorted(manifest["files"]) == ["model.stablehlo", "params.npz", "tokenizer/tokenizer.json",
                                       "tokenizer/tokenizer_config.json", "tokenizer/vocab.txt"]
  for name, record in manifest["files"].items():
    assert record == {"bytes": os.path.getsize(os.path.join(copy, name)),
                      "sha256": sha256_file(os.path.join(copy, name))}
  assert manifest["manifest_sha256"] == manifest_digest(manifest)
