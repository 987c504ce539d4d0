"""Parity against the reference implementation (transformers + torch on CPU)."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import flaxbert
from flaxbert import bundle as bundle_lib
from flaxbert.bundle.hf import params_to_hf

from conftest import make_hf_checkpoint, random_batch

TEXTS = [
    "Hello world, this is a test.",
    "The quick brown fox jumps over the lazy dog near the riverbank!",
    "Ünïcödé accents, CJK 東京 and e-mail: someone@example.com (2026).",
    "",
    "unbelievably   spaced\ttabs and\u00a0non-breaking spaces",
]
PAIRS = [("Is this the first segment?", "Yes, and this is the second one."),
         ("short", "a much longer second segment that keeps going for a while")]


def test_minilm_input_ids_match_transformers(minilm_dir):
  _, _, tokenizer = flaxbert.load(minilm_dir)
  reference = transformers.AutoTokenizer.from_pretrained(minilm_dir)
  for text in TEXTS:
    assert tokenizer.build_inputs(tokenizer.encode(text))[0] == reference(text)["input_ids"]
  for a, b in PAIRS:
    ids, segments = tokenizer.build_inputs(tokenizer.encode(a), tokenizer.encode(b))
    want = reference(a, b)
    assert ids == want["input_ids"] and segments == want["token_type_ids"]
    # Longest-first truncation, as transformers does it.
    ids, _ = tokenizer.build_inputs(tokenizer.encode(a), tokenizer.encode(b), max_length=12)
    assert ids == reference(a, b, truncation="longest_first", max_length=12)["input_ids"]


def test_minilm_hidden_and_pooled_match_transformers(minilm_dir):
  model, params, tokenizer = flaxbert.load(minilm_dir)
  reference = transformers.AutoTokenizer.from_pretrained(minilm_dir)
  enc = reference(TEXTS + [a for a, _ in PAIRS], padding=True, return_tensors="pt")
  torch_model = transformers.BertModel.from_pretrained(minilm_dir).eval()
  with torch.no_grad():
    want = torch_model(**enc)
  out = model.apply({"params": params}, *(jnp.asarray(enc[k].numpy()) for k in
                                          ("input_ids", "token_type_ids", "attention_mask")))
  mask = enc["attention_mask"].numpy()[..., None]
  hidden_err = np.abs((np.asarray(out["hidden"]) - want.last_hidden_state.numpy()) * mask).max()
  pooled_err = np.abs(np.asarray(out["pooled"]) - want.pooler_output.numpy()).max()
  print(f"MiniLM parity: hidden max abs err {hidden_err:.3g}, pooled {pooled_err:.3g}")
  assert hidden_err <= 1e-4 and pooled_err <= 1e-4


def test_pretraining_logits_match_after_conversion(hf_pretraining_dir, tmp_path):
  directory, torch_model = hf_pretraining_dir
  bundle_dir = tmp_path / "bundle"
  bundle_lib.save(str(bundle_dir), bundle_lib.import_hf(directory))
  model, params, _ = flaxbert.load(str(bundle_dir))
  assert model.config.num_layers == 3 and model.config.intermediate_size == 200
  ids, segments, mask = random_batch(np.random.default_rng(0), 4, 24, 1000)
  with torch.no_grad():
    want = torch_model(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(segments),
                       attention_mask=torch.tensor(mask))
  out = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(segments),
                    jnp.asarray(mask))
  real = mask[..., None] > 0
  mlm_err = np.abs(np.where(real, out["mlm_logits"] - want.prediction_logits.numpy(), 0)).max()
  nsp_err = np.abs(out["nsp_logits"] - want.seq_relationship_logits.numpy()).max()
  print(f"BertForPreTraining parity: MLM max abs err {mlm_err:.3g}, NSP {nsp_err:.3g}")
  assert mlm_err <= 1e-4 and nsp_err <= 1e-4


@pytest.mark.parametrize("architecture,head,key,ours", [
    ("BertForSequenceClassification", "classification", "logits", "logits"),
    ("BertForTokenClassification", "tagging", "logits", "logits"),
    ("BertForQuestionAnswering", "span_qa", "start_logits", "start_logits"),
])
def test_task_heads_match_after_conversion(tmp_path, architecture, head, key, ours):
  num_labels = 2 if head == "span_qa" else 3  # HF's QA layer has num_labels (start, end) outputs
  torch_model = make_hf_checkpoint(str(tmp_path), architecture, seed=1, num_labels=num_labels,
                                   num_hidden_layers=2, hidden_act="gelu_new")
  bundle = bundle_lib.import_hf(str(tmp_path))
  assert bundle.head == head
  ids, segments, mask = random_batch(np.random.default_rng(1), 3, 20, 1000)
  with torch.no_grad():
    want = getattr(torch_model(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(segments),
                               attention_mask=torch.tensor(mask)), key).numpy()
  got = np.asarray(bundle.model.apply({"params": bundle.params}, jnp.asarray(ids),
                                      jnp.asarray(segments), jnp.asarray(mask))[ours])
  if got.ndim >= 2 and got.shape[1] == 20:  # per-token outputs: compare real tokens only
    real = mask.astype(bool)
    got, want = got[real], want[real]
  np.testing.assert_allclose(got, want, atol=1e-4)
  # And back: the same tensors, bit for bit.
  before = load_file(str(tmp_path / "model.safetensors"))
  after = params_to_hf(bundle.params, bundle.config, head)
  assert sorted(before) == sorted(after)
  assert all(np.array_equal(before[k], after[k]) for k in before)


def test_round_trip_is_bit_exact(minilm_dir, hf_pretraining_dir, tmp_path):
  for name, source in (("minilm", minilm_dir), ("pretraining", hf_pretraining_dir[0])):
    bundle_lib.save(str(tmp_path / name / "bundle"), bundle_lib.import_hf(source))
    bundle_lib.export_hf(flaxbert.load(str(tmp_path / name / "bundle")),
                         str(tmp_path / name / "hf"))
    before = load_file(os.path.join(source, "model.safetensors"))
    after = load_file(str(tmp_path / name / "hf" / "model.safetensors"))
    before.pop("embeddings.position_ids", None)  # a buffer, not a weight
    if "cls.predictions.decoder.weight" not in before:  # tied: saved once by transformers
      after.pop("cls.predictions.decoder.weight", None)
    assert sorted(before) == sorted(after), name
    for key in before:
      assert before[key].dtype == after[key].dtype and np.array_equal(before[key], after[key]), key
    with open(os.path.join(source, "vocab.txt"), "rb") as a, \
        open(tmp_path / name / "hf" / "vocab.txt", "rb") as b:
      assert a.read() == b.read()
  # transformers itself loads the exported checkpoint and tokenizer.
  exported = str(tmp_path / "minilm" / "hf")
  transformers.BertModel.from_pretrained(exported)
  reference = transformers.AutoTokenizer.from_pretrained(minilm_dir)
  assert transformers.BertTokenizer.from_pretrained(exported)(TEXTS[2])["input_ids"] == \
      reference(TEXTS[2])["input_ids"]


def test_missing_heads_are_initialised_with_one_line(hf_pretraining_dir, caplog, tmp_path):
  directory, _ = hf_pretraining_dir
  base = make_hf_checkpoint(str(tmp_path / "masked_lm"), "BertForMaskedLM", num_hidden_layers=1)
  del base
  with caplog.at_level("WARNING", logger="flaxbert"):
    bundle = bundle_lib.import_hf(str(tmp_path / "masked_lm"))
  assert bundle.head == "pretraining"
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 1 and "nsp" in lines[0] and "mlm" not in lines[0].split(":")[-1]
  # Re-heading a pretrained bundle keeps the encoder and names the fresh head.
  caplog.clear()
  with caplog.at_level("WARNING", logger="flaxbert"):
    reheaded = bundle_lib.load(directory, head="classification", num_labels=4)
  assert reheaded.head == "classification" and "classifier" in caplog.records[0].getMessage()
  np.testing.assert_array_equal(
      reheaded.params["bert"]["pooler"]["dense"]["kernel"],
      bundle_lib.import_hf(directory).params["bert"]["pooler"]["dense"]["kernel"])
