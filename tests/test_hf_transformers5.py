"""Checkpoints saved by transformers 5 (tokenizer.json, no vocab.txt) in and out of flaxbert,
checked against the installed transformers + torch."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer as HFTokenizer, normalizers, pre_tokenizers

import flaxbert
from flaxbert import bundle as bundle_lib
from flaxbert.bundle.bert import abstract_params
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError

from conftest import call_cli, make_hf_checkpoint, snapshot, write_vocab

TEXTS = [
    "Hello World, this is a TEST of MiXeD casing!",
    "Ünïcödé àccents, CJK 東京 and 北京, e-mail: someone@example.com (2026).",
    "unbelievably   spaced\ttabs and\u00a0non-breaking spaces... ?!",
    "pneumonoultramicroscopicsilicovolcanoconiosis " + "x" * 120,   # past 100 characters: [UNK]
    "",
]
PAIRS = [("Is this the first segment?", "Yes, and this is the second one."),
         ("short", "a much longer second segment that keeps going for a while")]
# Literal special-token text: flaxbert keeps it text, as transformers does with
# split_special_tokens=True (by default transformers turns it into the control token).
SPECIAL_TEXT = "the [MASK] was [SEP] [cls] <pad>"


@pytest.fixture(scope="module")
def transformers5_dir(tmp_path_factory):
  """A tiny random BertForPreTraining and a BertTokenizerFast, both saved by transformers'
  save_pretrained: the layout transformers 5 writes (no vocab.txt)."""
  directory = str(tmp_path_factory.mktemp("transformers5"))
  model = make_hf_checkpoint(directory, num_hidden_layers=2, hidden_size=32,
                             num_attention_heads=2, intermediate_size=64, seed=5)
  vocab = str(tmp_path_factory.mktemp("vocab"))
  shutil.move(os.path.join(directory, "vocab.txt"), vocab)   # make_hf_checkpoint wrote one
  # from_pretrained: transformers 5's BertTokenizerFast(vocab_file=...) ignores the file.
  tokenizer = transformers.BertTokenizerFast.from_pretrained(vocab)
  assert len(tokenizer) == 1000
  tokenizer.save_pretrained(directory)
  if os.path.exists(os.path.join(directory, "vocab.txt")):   # transformers 4 writes one
    os.remove(os.path.join(directory, "vocab.txt"))
  assert os.path.isfile(os.path.join(directory, "tokenizer.json"))
  return directory, model


def assert_same_ids(tokenizer, reference):
  for text in TEXTS:
    assert tokenizer.build_inputs(tokenizer.encode(text))[0] == reference(text)["input_ids"], text
  for a, b in PAIRS:
    ids, segments = tokenizer.build_inputs(tokenizer.encode(a), tokenizer.encode(b))
    want = reference(a, b)
    assert ids == want["input_ids"] and segments == want["token_type_ids"]


def test_transformers5_checkpoint_embeds_and_converts(transformers5_dir, tmp_path):
  directory, torch_model = transformers5_dir
  reference = transformers.AutoTokenizer.from_pretrained(directory)
  tokenizer = load_tokenizer(directory)
  assert_same_ids(tokenizer, reference)
  split = transformers.AutoTokenizer.from_pretrained(directory, split_special_tokens=True)
  assert tokenizer.encode(SPECIAL_TEXT) == split(SPECIAL_TEXT, add_special_tokens=False)[
      "input_ids"]
  assert tokenizer.mask_id not in tokenizer.encode(SPECIAL_TEXT)

  # `flaxbert embed DIR`: ids and hidden states as transformers computes them.
  singles = [t for t in TEXTS if t and "\t" not in t]   # a tab would make a pair
  texts = singles + [f"{a}\t{b}" for a, b in PAIRS]
  (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
  rc, _, err = call_cli("embed", directory, "--input", tmp_path / "texts.txt",
                        "--output", tmp_path / "out.npz", "--max-length", 64, "--quiet")
  assert rc == 0, err
  got = np.load(tmp_path / "out.npz")
  rows = [reference(t) for t in singles] + [reference(a, b) for a, b in PAIRS]
  with torch.no_grad():
    for i, row in enumerate(rows):
      n = len(row["input_ids"])
      assert got["input_ids"][i, :n].tolist() == row["input_ids"] and got["mask"][i].sum() == n
      want = torch_model.bert(**{k: torch.tensor([v]) for k, v in row.items()}).last_hidden_state
      np.testing.assert_allclose(got["hidden"][i, :n], want[0].numpy(), atol=1e-4)

  # `flaxbert convert --from-hf DIR`: a bundle with the same tokenizer and weights.
  rc, out, err = call_cli("convert", "--from-hf", directory, "--out", tmp_path / "bundle")
  assert rc == 0 and "wordpiece tokenizer" in out, err
  bundle = flaxbert.load(str(tmp_path / "bundle"))
  imported = bundle_lib.import_hf(directory)
  assert_same_ids(bundle.tokenizer, reference)
  assert jax.tree.all(jax.tree.map(np.array_equal, bundle.params, imported.params))
  # `finetune --init DIR` loads it re-headed: the encoder as imported, a fresh classifier.
  reheaded = bundle_lib.load(directory, head="classification", num_labels=3)
  assert_same_ids(reheaded.tokenizer, reference)
  assert jax.tree.all(jax.tree.map(np.array_equal, reheaded.params["bert"],
                                   imported.params["bert"]))
  assert np.shape(reheaded.params["classifier"]["dense"]["kernel"]) == (32, 3)


def test_tokenizer_json_alone_matches_transformers(minilm_dir, tmp_path):
  """all-MiniLM-L6-v2's tokenizer.json without its vocab.txt or configs: real vocabulary, and
  its file pads and truncates every encoding to 128, which flaxbert must not do."""
  shutil.copyfile(os.path.join(minilm_dir, "tokenizer.json"), tmp_path / "tokenizer.json")
  tokenizer = load_tokenizer(str(tmp_path))
  reference = transformers.AutoTokenizer.from_pretrained(minilm_dir)
  assert tokenizer.vocab_size == 30522
  assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id,
          tokenizer.mask_id) == (0, 100, 101, 102, 103)
  assert_same_ids(tokenizer, reference)
  long_text = " ".join(["word"] * 300)
  assert tokenizer.encode(long_text) == reference(long_text, add_special_tokens=False)[
      "input_ids"] and len(tokenizer.encode(long_text)) == 300
  ids = tokenizer.encode("unaffable")
  assert tokenizer.is_word_start(ids) == [True] + [False] * (len(ids) - 1) and len(ids) > 1
  # And as transformers 5 saves it again (tokenizer.json + tokenizer_config.json).
  reference.save_pretrained(str(tmp_path / "resaved"))
  assert not os.path.exists(tmp_path / "resaved" / "vocab.txt")
  assert_same_ids(load_tokenizer(str(tmp_path / "resaved")), reference)
  assert tokenizer.decode(tokenizer.build_inputs(ids)[0]) == "unaffable"


def test_a_pipeline_of_its_own_is_honoured(transformers5_dir, tmp_path):
  """A tokenizer.json that is not BERT's pipeline (NFD + lowercase + accent stripping,
  whitespace pre-tokenizer) under a generic class: its own steps give the ids, and an export
  says PreTrainedTokenizerFast so transformers also takes the file as it is."""
  directory, _ = transformers5_dir
  tok = HFTokenizer.from_file(os.path.join(directory, "tokenizer.json"))
  tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(),
                                         normalizers.StripAccents()])
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  (tmp_path / "custom").mkdir()
  tok.save(str(tmp_path / "custom" / "tokenizer.json"))
  (tmp_path / "custom" / "tokenizer_config.json").write_text(
      json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}), encoding="utf-8")
  tokenizer = load_tokenizer(str(tmp_path / "custom"))
  reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "custom"))
  for text in TEXTS:
    assert tokenizer.encode(text) == reference(text, add_special_tokens=False)["input_ids"]
  # Whitespace keeps "?!" one word (no "##!" piece: [UNK]); BERT splits every punctuation mark.
  assert tokenizer.encode("wow?!") != load_tokenizer(directory).encode("wow?!")
  tokenizer.save(str(tmp_path / "saved"))
  config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
  assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
  assert_same_ids(tokenizer, transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved")))


def test_tokenizer_json_wins_over_vocab_txt(transformers5_dir, tmp_path):
  """With both files (transformers 4's layout), tokens added after the vocabulary was made
  live only in tokenizer.json; transformers takes them from there, and so does flaxbert."""
  directory, _ = transformers5_dir
  reference = transformers.AutoTokenizer.from_pretrained(directory)
  assert reference.add_tokens(["zqxword", "Hello"]) == 2
  reference.save_pretrained(str(tmp_path))
  write_vocab(tmp_path / "vocab.txt", 1000)   # the vocabulary without the added tokens
  reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  text = "a zqxword b hello Hello"
  tokenizer = load_tokenizer(str(tmp_path))
  assert tokenizer.build_inputs(tokenizer.encode(text))[0] == reference(text)["input_ids"]
  assert {1000, 1001} <= set(tokenizer.encode(text)) and tokenizer.vocab_size == 1002
  assert tokenizer.is_word_start(tokenizer.encode("zqxword")) == [True]
  assert_same_ids(tokenizer, reference)


def test_special_token_names_come_from_the_config(tmp_path):
  """A vocabulary whose specials are <pad> <unk> <s> </s> <mask>, named in
  tokenizer_config.json (and special_tokens_map.json by older transformers)."""
  names = {"pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>",
           "mask_token": "<mask>"}
  write_vocab(tmp_path / "base.txt", 200)
  words = (tmp_path / "base.txt").read_text(encoding="utf-8").split("\n")[5:]
  (tmp_path / "vocab").mkdir()
  (tmp_path / "vocab" / "vocab.txt").write_text(
      "\n".join(["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + words), encoding="utf-8")
  saved = tmp_path / "saved"
  transformers.BertTokenizerFast.from_pretrained(str(tmp_path / "vocab"), **names) \
      .save_pretrained(str(saved))
  tokenizer = load_tokenizer(str(saved))
  assert (tokenizer.cls_id, tokenizer.pad_id, tokenizer.sep_id, tokenizer.unk_id,
          tokenizer.mask_id) == (0, 1, 2, 3, 4)
  reference = transformers.AutoTokenizer.from_pretrained(str(saved))
  assert_same_ids(tokenizer, reference)
  # And our save of it reads back the same, in flaxbert and in transformers.
  tokenizer.save(str(tmp_path / "again"))
  assert_same_ids(load_tokenizer(str(tmp_path / "again")), reference)
  assert_same_ids(load_tokenizer(str(tmp_path / "again")),
                  transformers.AutoTokenizer.from_pretrained(str(tmp_path / "again")))


def test_export_loads_in_transformers5(transformers5_dir, tmp_path):
  directory, _ = transformers5_dir
  reference = transformers.AutoTokenizer.from_pretrained(directory)
  bundle_lib.save(str(tmp_path / "bundle"), bundle_lib.import_hf(directory))
  rc, out, err = call_cli("convert", "--to-hf", tmp_path / "bundle", "--out", tmp_path / "hf")
  assert rc == 0, err
  hf = tmp_path / "hf"
  assert {"vocab.txt", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(hf))
  config = json.loads((hf / "tokenizer_config.json").read_text())
  assert config["tokenizer_class"] == "BertTokenizer" and config["do_lower_case"] is True
  assert config["model_max_length"] == 64 and config["mask_token"] == "[MASK]"
  for loader in (transformers.AutoTokenizer, transformers.BertTokenizer):
    assert_same_ids(load_tokenizer(str(hf)), loader.from_pretrained(str(hf)))
  # vocab.txt and its config without tokenizer.json, as tools that predate tokenizer.json
  # read them: the same ids as the original.
  (tmp_path / "vocab_only").mkdir()
  for name in ("vocab.txt", "tokenizer_config.json"):
    shutil.copyfile(hf / name, tmp_path / "vocab_only" / name)
  vocab_only = transformers.BertTokenizer.from_pretrained(str(tmp_path / "vocab_only"))
  assert len(vocab_only) == len(reference) == 1000
  for text in TEXTS + [SPECIAL_TEXT]:
    assert vocab_only(text)["input_ids"] == reference(text)["input_ids"]
  # And flaxbert reads its own export back (tokenizer.json preferred) with the same ids.
  assert_same_ids(load_tokenizer(str(hf)), reference)


def test_bad_tokenizer_json_is_one_line(transformers5_dir, tmp_path):
  directory, _ = transformers5_dir
  broken = tmp_path / "broken"
  shutil.copytree(directory, broken)
  (broken / "tokenizer.json").write_text('{"version": "1.0", "model": {', encoding="utf-8")
  before = snapshot(str(broken))
  rc, out, err = call_cli("convert", "--from-hf", broken, "--out", tmp_path / "bundle")
  assert rc == 2 and "tokenizer.json: not a tokenizers tokenizer.json" in err
  assert len(err.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "bundle")
  assert snapshot(str(broken)) == before
  # A well-formed file of another model kind is named as such.
  bpe = transformers.AutoTokenizer.from_pretrained(directory)._tokenizer.to_str()
  spec = json.loads(bpe)
  spec["model"] = {"type": "BPE", "vocab": {"[UNK]": 0, "a": 1}, "merges": []}
  spec["added_tokens"] = []
  spec["post_processor"] = None
  (broken / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
  with pytest.raises(FlaxbertError, match="a BPE tokenizer; flaxbert reads WordPiece"):
    load_tokenizer(str(broken))
  # A special token the config names that the vocabulary lacks.
  shutil.copyfile(os.path.join(directory, "tokenizer.json"), broken / "tokenizer.json")
  (broken / "tokenizer_config.json").write_text('{"mask_token": "<mask>"}', encoding="utf-8")
  with pytest.raises(FlaxbertError, match=r"tokenizer.json: vocabulary has no <mask> token"):
    load_tokenizer(str(broken))


def test_missing_heads_get_the_models_initialisers(tmp_path):
  """An import computes only the groups the checkpoint lacks (one jitted init), drawn as the
  model's initialisers draw them: N(0, initializer_range) kernels, zero biases, by seed."""
  make_hf_checkpoint(str(tmp_path), "BertForMaskedLM", num_hidden_layers=1, hidden_size=32,
                     num_attention_heads=2, intermediate_size=64, seed=2)
  bundle = bundle_lib.import_hf(str(tmp_path), seed=7)
  assert bundle.head == "pretraining"
  shapes = jax.tree.map(lambda x: x.shape, abstract_params(bundle.model))
  assert jax.tree.map(np.shape, bundle.params) == shapes
  pooler = bundle.params["bert"]["pooler"]["dense"]   # BertForMaskedLM has none to import
  assert 0.016 < np.std(pooler["kernel"]) < 0.024 and not np.any(pooler["bias"])
  assert np.std(bundle.params["nsp"]["dense"]["kernel"]) > 0.01
  again, other = (bundle_lib.import_hf(str(tmp_path), seed=s) for s in (7, 8))
  assert np.array_equal(again.params["nsp"]["dense"]["kernel"],
                        bundle.params["nsp"]["dense"]["kernel"])
  assert not np.array_equal(other.params["nsp"]["dense"]["kernel"],
                            bundle.params["nsp"]["dense"]["kernel"])
  # The imported tensors are the checkpoint's, untouched by the fresh initialisation.
  np.testing.assert_array_equal(other.params["mlm"]["output_bias"],
                                bundle.params["mlm"]["output_bias"])
