"""Continued pretraining: `flaxbert pretrain --init BUNDLE|HF_DIR` starts from a checkpoint's
model config, tokenizer and weights (heads it lacks made fresh), and resumes from its own."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from conftest import call_cli, make_hf_checkpoint
from flaxbert import bundle as bundle_lib
from flaxbert.data import pipeline
from flaxbert.data.tokenizer import load_tokenizer


# The same model shape and settings in every run of this file: one compiled train step.
NO_DROPOUT = ["--set", "hidden_dropout=0", "--set", "attention_dropout=0"]


def init_args(init, workdir, corpus, steps=1):
  # One warmup step: the first update is made with learning rate 0, so after one step the
  # run's parameters must be its checkpoint's bit for bit.
  return ["pretrain", "--init", init, "--workdir", workdir, "--corpus", corpus,
          "--eval-corpus", corpus, "--steps", str(steps), "--warmup-steps", "1",
          "--batch-size", "8", "--max-length", "32",
          "--log-every", "1", "--eval-batches", "1", "--checkpoint-every", "1", "--quiet",
          *NO_DROPOUT]


def rows(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def assert_same_tree(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def reference_losses(hf_dir, batch):
  """transformers' MLM and NSP losses of the batch, as flaxbert's objective defines them."""
  model = transformers.BertForPreTraining.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(batch["input_ids"], dtype=torch.long),
                token_type_ids=torch.as_tensor(batch["segment_ids"], dtype=torch.long),
                attention_mask=torch.as_tensor(batch["input_mask"], dtype=torch.long))
  logits = out.prediction_logits.double()
  positions = torch.as_tensor(batch["masked_positions"], dtype=torch.long)
  rows_ = torch.arange(positions.shape[0])[:, None]
  log_probs = torch.log_softmax(logits[rows_, positions], -1)
  ids = torch.as_tensor(batch["masked_ids"], dtype=torch.long)
  weights = torch.as_tensor(batch["masked_weights"], dtype=torch.float64)
  mlm = -(log_probs.gather(-1, ids[..., None])[..., 0] * weights).sum() / weights.sum()
  nsp = torch.nn.functional.cross_entropy(out.seq_relationship_logits.double(),
                                          torch.as_tensor(batch["nsp_label"], dtype=torch.long))
  return float(mlm), float(nsp)


def test_init_from_a_bundle_starts_from_its_weights_and_resumes_from_its_own(
    tiny_hf, small_corpus, tmp_path):
  # A flaxbert bundle of the random HF BertForPreTraining: same weights, WordPiece tokenizer.
  init = str(tmp_path / "init")
  bundle_lib.save(init, bundle_lib.import_hf(tiny_hf))
  workdir = str(tmp_path / "run")
  rc, _, err = call_cli(*init_args(init, workdir, small_corpus, 1))
  assert rc == 0, err
  assert "training a" not in err   # no tokenizer was trained: the checkpoint's is kept
  tokenizer = load_tokenizer(os.path.join(workdir, "tokenizer"))
  assert (tokenizer.kind, tokenizer.vocab_size) == ("wordpiece", 1000)
  out = bundle_lib.load(os.path.join(workdir, "bundle"))
  assert out.config.hidden_size == 96 and out.config.hidden_dropout == 0.0
  assert_same_tree(out.params, bundle_lib.load(init).params)
  # The first step's losses are the checkpoint's on that batch, as transformers computes them.
  batch = next(pipeline.pretraining_batches(
      [small_corpus], os.path.join(workdir, "tokenizer"), os.path.join(workdir, "data", "prepared"),
      batch_size=8, seq_length=32, seed=0))
  mlm, nsp = reference_losses(tiny_hf, batch)
  first = rows(workdir)[0]
  assert first["step"] == 1
  np.testing.assert_allclose([first["mlm_loss"], first["nsp_loss"]], [mlm, nsp], rtol=1e-5)
  # Training longer resumes from the run's own checkpoint, not from --init again.
  rc, _, err = call_cli(*init_args(init, workdir, small_corpus, 3))
  assert rc == 0, err
  assert "resuming from step 1" in err
  assert [r["step"] for r in rows(workdir)] == [1, 2, 3]


def test_an_hf_masked_lm_keeps_its_mlm_head_and_gets_a_fresh_nsp_head(small_corpus, tmp_path):
  hf_dir = str(tmp_path / "masked_lm")
  hf = make_hf_checkpoint(hf_dir, "BertForMaskedLM", num_hidden_layers=2, seed=5)
  workdir = str(tmp_path / "run")
  rc, _, err = call_cli(*init_args(hf_dir, workdir, small_corpus))
  assert rc == 0, err
  fresh = [line for line in err.splitlines() if "initialised fresh" in line]
  assert len(fresh) == 1, err
  assert "nsp" in fresh[0] and "mlm" not in fresh[0], fresh[0]
  params = bundle_lib.load(os.path.join(workdir, "bundle")).params
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  mlm = params["mlm"]
  np.testing.assert_array_equal(mlm["transform"]["kernel"],
                                sd["cls.predictions.transform.dense.weight"].T)
  np.testing.assert_array_equal(mlm["transform_norm"]["scale"],
                                sd["cls.predictions.transform.LayerNorm.weight"])
  np.testing.assert_array_equal(mlm["output_bias"], sd["cls.predictions.bias"])
  np.testing.assert_array_equal(params["bert"]["embeddings"]["word_embeddings"]["embedding"],
                                sd["bert.embeddings.word_embeddings.weight"])
  assert params["nsp"]["dense"]["kernel"].shape == (96, 2)


@pytest.mark.parametrize("extra, message", [
    (["--config", "bert_12_768_12"], "--config cannot be given with it"),
    (["--vocab-size", "500"], "--vocab-size cannot be given with it"),
    (["--set", "num_layers=4"], "--set num_layers: a run from --init keeps its checkpoint's "
     "model; only dtype, attention_impl, remat, hidden_dropout, attention_dropout may be set"),
    (["--model", "encdec"], "--init continues BERT pretraining"),
])
def test_settings_that_contradict_the_checkpoint_are_one_error_line(tiny_hf, tmp_path, extra,
                                                                    message):
  workdir = tmp_path / "run"
  rc, out, err = call_cli("pretrain", "--init", tiny_hf, "--workdir", workdir, *extra)
  assert rc == 2 and out == ""
  assert err.count("\n") == 1 and err.startswith("flaxbert: error: ") and message in err, err
  assert not workdir.exists()


def test_a_missing_init_is_one_error_line(tmp_path):
  rc, _, err = call_cli("pretrain", "--init", tmp_path / "absent", "--workdir", tmp_path / "run")
  assert rc == 2 and err == (f"flaxbert: error: --init {tmp_path / 'absent'}: no such bundle or "
                             "checkpoint directory\n")
  assert not (tmp_path / "run").exists()
