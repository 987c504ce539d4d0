"""Fill-mask: the same tokens and probabilities as transformers' pipeline("fill-mask"), the
command on a SentencePiece bundle, and one-line errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import flaxbert

from conftest import call_cli
from flaxbert import bundle as bundle_lib
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.inference.fill_mask import fill_mask
from flaxbert.models.config import get_config
from flaxbert.models.factory import build_model, init_params
from flaxbert.models.heads import BertEncoder

# Texts of different lengths, one or two masks, a mask first and one before punctuation.
TEXTS = ["a b c [MASK] d e.", "the quick brown [MASK] jumps over the lazy dog",
         "[MASK] is the cat, where is the [MASK]?"]


def test_equals_transformers_pipeline(tiny_hf):
  # Through flaxbert.pipeline, the Python API a user reaches for (it calls fill_mask).
  ours = flaxbert.pipeline("fill-mask", tiny_hf, top_k=5, batch_size=2)(TEXTS)
  pipe = transformers.pipeline("fill-mask", model=tiny_hf, top_k=5)
  for text, masks in zip(TEXTS, ours):
    want = pipe(text)
    want = [want] if isinstance(want[0], dict) else want   # a list per mask when several
    assert len(masks) == len(want) == text.count("[MASK]")
    for got_candidates, want_candidates in zip(masks, want):
      assert [c["token_id"] for c in got_candidates] == [c["token"] for c in want_candidates]
      assert [c["token"] for c in got_candidates] == [c["token_str"] for c in want_candidates]
      np.testing.assert_allclose([c["score"] for c in got_candidates],
                                 [c["score"] for c in want_candidates], rtol=0, atol=1e-5)
      for got, expected in zip(got_candidates, want_candidates):
        if len(masks) == 1:
          assert got["sequence"] == expected["sequence"]
        elif not got["token"].startswith("##"):
          # transformers keeps [CLS]/[SEP] (and shows the other mask) when there are several.
          assert expected["sequence"] == f"[CLS] {got['sequence']} [SEP]"



@pytest.fixture(scope="module")
def spm_bundles(spm_dir, tmp_path_factory):
  """A random tiny pretraining bundle and an encoder-only one, both on the 800-piece
  SentencePiece tokenizer."""
  root = tmp_path_factory.mktemp("fill_mask")
  tokenizer = load_tokenizer(spm_dir)
  config = get_config("tiny", vocab_size=tokenizer.vocab_size, hidden_size=64,
                      intermediate_size=128, max_position_embeddings=64)
  model = build_model(config, "pretraining")
  # Initialised under jit: one compiled program instead of hundreds of eager ops (~2x faster).
  params = jax.jit(lambda: init_params(model, jax.random.key(0)))()
  mlm = bundle_lib.Bundle(model, params, tokenizer, model.config, "pretraining")
  bundle_lib.save(str(root / "mlm"), mlm)
  encoder = BertEncoder(model.config)
  bundle_lib.save(str(root / "encoder"), bundle_lib.Bundle(
      encoder, {"bert": params["bert"]}, tokenizer, model.config, "encoder"))
  return str(root / "mlm"), str(root / "encoder"), mlm


def test_sentencepiece_bundle(spm_bundles):
  mlm_dir, _, bundle = spm_bundles
  model, params, tokenizer = bundle
  texts = ["And the LORD [MASK] unto Moses, saying", "[MASK] [MASK] the earth"]
  (candidates,), two_masks = fill_mask(bundle, texts, top_k=3)
  # The literal "[MASK]" became the mask id between the pieces' ids; the scores are the
  # softmax of the model's MLM logits there.
  left, right = texts[0].split("[MASK]")
  ids, segments = tokenizer.build_inputs(
      tokenizer.encode(left) + [tokenizer.mask_id] + tokenizer.encode(right))
  position = ids.index(tokenizer.mask_id)
  logits = model.apply({"params": params}, jnp.asarray([ids]), jnp.asarray([segments]),
                       masked_positions=jnp.asarray([[position]]))["mlm_logits"][0, 0]
  probs = np.asarray(jax.nn.softmax(logits))
  best = np.argsort(-probs)[:3]
  assert [c["token_id"] for c in candidates] == best.tolist()
  np.testing.assert_allclose([c["score"] for c in candidates], probs[best], rtol=0, atol=1e-6)
  assert [c["token"] for c in candidates] == [tokenizer.id_to_token(i) for i in best]
  assert candidates[0]["sequence"] == tokenizer.decode(
      ids[1:position] + [int(best[0])] + ids[position + 1:-1])
  assert len(two_masks) == 2 and two_masks[1][0]["sequence"].startswith("[MASK] ")

  # The command prints each text, then per mask its candidates: score, token, sequence.
  rc, stdout, stderr = call_cli("fill-mask", mlm_dir, *texts, "--top-k", "3")
  assert rc == 0, stderr
  lines = stdout.splitlines()
  assert lines[0] == texts[0] and lines[4] == texts[1] and lines[5] == "  mask 1 of 2:"
  for line, candidate in zip(lines[1:4], candidates):
    score, token, sequence = line.split(maxsplit=2)
    assert abs(float(score) - candidate["score"]) < 1e-5 and token == candidate["token"]
    assert sequence == candidate["sequence"]
  rc, stdout, stderr = call_cli("fill-mask", mlm_dir, *texts, "--top-k", "3", "--json")
  assert rc == 0, stderr
  printed = json.loads(stdout)
  assert [entry["text"] for entry in printed] == texts
  assert printed[0]["masks"] == [candidates] and printed[1]["masks"] == two_masks


def test_bad_input_is_one_line(spm_bundles, tmp_path):
  mlm_dir, encoder_dir, *_ = spm_bundles
  long_text = " ".join(["word"] * 80) + " [MASK]"
  cases = {
      (encoder_dir, "a [MASK]"): "needs a bundle with a masked-LM head (pretraining); this "
                                 "one's head is 'encoder'",
      (mlm_dir, "no mask here"): "text 1 has no [MASK] to fill",
      (mlm_dir, long_text): "text 1: a [MASK] falls past --max-length 64",
      (mlm_dir, "a [MASK]", "--top-k", "0"): "--top-k must be between 1 and",
      (mlm_dir,): "no text given",
      (mlm_dir, "--input", tmp_path / "missing.txt"): "missing.txt: no such input file",
  }
  for args, message in cases.items():
    rc, _, stderr = call_cli("fill-mask", *args)
    assert rc == 2 and message in stderr and "Traceback" not in stderr, (args, stderr)
