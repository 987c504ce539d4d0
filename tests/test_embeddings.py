"""Sentence embeddings: sentence-transformers' pooling formulas on transformers' hidden states,
defaults taken from a sentence-transformers checkpoint and kept by its bundle, and `embed`."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers

import flaxbert
from conftest import call_cli
from flaxbert import bundle as bundle_lib
from flaxbert.inference.embed import sentence_embeddings

TEXTS = ["Hi.", "A sentence of a middling length, with some punctuation!",
         "The quick brown fox jumps over the lazy dog while the cat watches from a warm "
         "windowsill, wondering why anyone would ever jump over a dog at all.",
         "Short one", "Two words"]


def st_formula(hidden, mask, mode, normalize):
  """sentence-transformers' Pooling (cls / mean / max) and Normalize, in torch."""
  mask = mask.unsqueeze(-1).expand(hidden.size()).to(hidden.dtype)
  if mode == "cls":
    x = hidden[:, 0]
  elif mode == "mean":
    x = torch.sum(hidden * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)
  else:
    x = hidden.masked_fill(mask == 0, -1e9).max(1).values
  return torch.nn.functional.normalize(x, p=2, dim=1) if normalize else x


def test_minilm_equals_sentence_transformers(minilm_dir):
  """all-MiniLM-L6-v2 by default (its modules.json: mean pooling, Normalize; max_seq_length
  256) equals sentence-transformers' formula on transformers' AutoModel, texts of different
  lengths in one batch."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
  model = transformers.AutoModel.from_pretrained(minilm_dir).eval()
  inputs = tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**inputs).last_hidden_state
  want = st_formula(hidden, inputs["attention_mask"], "mean", True).numpy()

  got = flaxbert.pipeline("embed", minilm_dir, batch_size=8)(TEXTS)   # sentence_embeddings
  assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


@pytest.fixture(scope="module")
def tiny(tiny_hf):
  """tiny_hf's bundle and transformers' hidden states for TEXTS (3 = embeddings + 2 layers)."""
  bundle = bundle_lib.load(tiny_hf)
  rows = bundle.tokenizer.encode_inputs([(t, None) for t in TEXTS], 64)
  length = max(len(r["input_ids"]) for r in rows)
  ids = np.zeros((len(rows), length), np.int64)
  mask = np.zeros_like(ids)
  for i, row in enumerate(rows):
    ids[i, :len(row["input_ids"])] = row["input_ids"]
    mask[i, :len(row["input_ids"])] = 1
  model = transformers.BertModel.from_pretrained(tiny_hf).eval()
  with torch.no_grad():
    out = model(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
  return bundle, out, torch.tensor(mask)


def test_pooling_modes_against_hidden_states(tiny):
  bundle, out, mask = tiny
  for mode, normalize in (("cls", False), ("mean", False), ("max", True), ("pooler", True)):
    if mode == "pooler":
      want = torch.nn.functional.normalize(out.pooler_output, dim=1)
    else:
      want = st_formula(out.last_hidden_state, mask, mode, normalize)
    got = sentence_embeddings(bundle, TEXTS, pooling=mode, normalize=normalize, batch_size=8,
                              max_length=64)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-5, err_msg=mode)
  # The embeddings' output (hidden state 0) and the last layer averaged; in batches of 2:
  # several length buckets and a short last batch filled with copies.
  want = st_formula((out.hidden_states[0] + out.hidden_states[-1]) / 2, mask, "mean", True)
  got = sentence_embeddings(bundle, TEXTS, normalize=True, layers=(0, -1), batch_size=2,
                            max_length=64)
  np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-5)


def sentence_transformers_dir(source, target, pooling_key):
  """`source` (an HF BERT dir) as a sentence-transformers checkpoint pooling by `pooling_key`,
  with a Normalize module."""
  shutil.copytree(source, target)
  modules = [{"idx": 0, "name": "0", "path": "",
              "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"},
             {"idx": 2, "name": "2", "path": "2_Normalize",
              "type": "sentence_transformers.models.Normalize"}]
  (target / "modules.json").write_text(json.dumps(modules))
  (target / "1_Pooling").mkdir()
  keys = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens")
  (target / "1_Pooling" / "config.json").write_text(json.dumps(
      {"word_embedding_dimension": 96, **{k: k == pooling_key for k in keys}}))
  (target / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
  return str(target)


def test_converted_bundle_keeps_pooling_and_embed_command(tiny_hf, tmp_path):
  """A converted sentence-transformers checkpoint keeps its pooling (cls, normalised, max
  length 32) in its bundle; `embed` uses it, and flags given override it."""
  st_dir = sentence_transformers_dir(tiny_hf, tmp_path / "st", "pooling_mode_cls_token")
  rc, _, stderr = call_cli("convert", "--from-hf", st_dir, "--out", tmp_path / "bundle")
  assert rc == 0, stderr
  with open(tmp_path / "bundle" / "config.json") as f:
    assert json.load(f)["sentence_embedding"] == {"pooling": "cls", "normalize": True,
                                                  "max_length": 32}
  (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
  rc, stdout, stderr = call_cli("embed", tmp_path / "bundle", "--input", tmp_path / "in.txt",
                                "--output", tmp_path / "out.npz", "--quiet")
  assert rc == 0, stderr
  assert "cls pooling, normalized, layers -1" in stdout
  npz = np.load(tmp_path / "out.npz")
  assert sorted(npz.files) == ["embeddings", "hidden", "input_ids", "mask", "pooled"]
  assert npz["input_ids"].shape[1] == 32 and npz["embeddings"].dtype == np.float32
  cls = npz["hidden"][:, 0]
  np.testing.assert_allclose(npz["embeddings"], cls / np.linalg.norm(cls, axis=1, keepdims=True),
                             rtol=0, atol=1e-6)

  # Explicit flags win: mean over the last two layers, not normalised.
  rc, stdout, stderr = call_cli("embed", tmp_path / "bundle", "--input", tmp_path / "in.txt",
                                "--output", tmp_path / "mean.npz", "--quiet", "--pooling",
                                "mean", "--no-normalize", "--layers", "-2", "-1")
  assert rc == 0, stderr
  mean = np.load(tmp_path / "mean.npz")["embeddings"]
  np.testing.assert_allclose(mean, sentence_embeddings(
      tmp_path / "bundle", TEXTS, pooling="mean", normalize=False, layers=(-2, -1)),
      rtol=0, atol=1e-6)
  assert not np.allclose(np.linalg.norm(mean, axis=1), 1.0)


def test_bad_pooling_settings_are_one_line(tiny_hf, tmp_path):
  (tmp_path / "in.txt").write_text("one text\n", encoding="utf-8")
  st_dir = sentence_transformers_dir(tiny_hf, tmp_path / "st", "pooling_mode_max_tokens")
  config = tmp_path / "st" / "1_Pooling" / "config.json"
  config.write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
  base = ["--input", tmp_path / "in.txt", "--output", tmp_path / "o.npz", "--quiet"]
  cases = {
      (st_dir,): "pooling 'weightedmean' is not supported",
      (tiny_hf, "--pooling", "avg"): "unknown pooling 'avg'",
      (tiny_hf, "--layers", "-4"): "layer -4 does not exist: the model has 3 hidden states",
      (tiny_hf, "--layers=-1,x"): "--layers '-1,x': expected comma-separated",
      (tiny_hf, "--pooling", "pooler", "--layers", "0"): "--pooling pooler is BERT's pooled",
  }
  for args, message in cases.items():
    rc, _, stderr = call_cli("embed", *args, *base)
    assert rc == 2 and message in stderr and "Traceback" not in stderr, (args, stderr)
  # The checkpoint's unsupported pooling is overridden by a flag.
  rc, _, stderr = call_cli("embed", st_dir, *base, "--pooling", "mean")
  assert rc == 0, stderr
  (tmp_path / "st" / "modules.json").write_text("[{")
  rc, _, stderr = call_cli("embed", st_dir, *base)
  assert rc == 2 and "modules.json:1: malformed JSON" in stderr   # as every JSON file (jsonfile)
  assert not os.path.exists(tmp_path / "o.npz.partial.npz")
