"""Both tokenizer kinds behind one interface (flaxbert.data.tokenizer)."""

import os

import pytest

from flaxbert.data.tokenizer import (SPECIAL_TOKENS, WordPieceTokenizer, load_tokenizer,
                                     train_sentencepiece)
from flaxbert.errors import FlaxbertError

WORDS = ["the", "cat", "sat", "on", "mat", "un", "##aff", "##able", "##s", ",", ".", "é"]


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("wordpiece")
  (directory / "vocab.txt").write_text("\n".join(list(SPECIAL_TOKENS) + WORDS) + "\n",
                                       encoding="utf-8")
  return str(directory)


def test_sentencepiece_specials_and_round_trip(spm_dir):
  tokenizer = load_tokenizer(spm_dir)
  assert tokenizer.kind == "sentencepiece"
  assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id,
          tokenizer.mask_id) == (0, 1, 2, 3, 4)
  text = "In the beginning God created the heaven and the earth."
  assert tokenizer.decode(tokenizer.encode(text)) == text
  assert tokenizer.decode(tokenizer.encode("naïve 北京 ☃")) == "naïve 北京 ☃"   # byte fallback


def test_special_tokens_in_text_stay_text(spm_dir, wordpiece_dir):
  for directory in (spm_dir, wordpiece_dir):
    tokenizer = load_tokenizer(directory)
    assert not set(tokenizer.encode("the [MASK] [SEP] [CLS]")) & {
        tokenizer.mask_id, tokenizer.sep_id, tokenizer.cls_id}


def test_build_inputs_truncates_the_longer_side(spm_dir):
  tokenizer = load_tokenizer(spm_dir)
  ids, segments = tokenizer.build_inputs(list(range(10, 30)), list(range(40, 45)), max_length=16)
  assert ids == [2] + list(range(10, 18)) + [3] + list(range(40, 45)) + [3]
  assert segments == [0] * 10 + [1] * 6
  with pytest.raises(FlaxbertError, match="leaves no room"):
    tokenizer.build_inputs([10], [11], max_length=4)


def test_sentencepiece_offsets_point_at_the_text(spm_dir):
  tokenizer = load_tokenizer(spm_dir)
  text = "The  LORD's — cœur, microorganisms."
  ids, spans = tokenizer.encode_with_offsets(text)
  assert ids == tokenizer.encode(text)
  assert all(0 <= s <= e <= len(text) for s, e in spans)
  pieces = "".join(text[s:e] for (s, e), (s2, _) in zip(spans, spans[1:] + [(None, None)])
                   if s != s2)
  assert pieces == text.replace(" ", "")


def test_is_word_start(spm_dir, wordpiece_dir):
  sp = load_tokenizer(spm_dir)
  ids = sp.encode("abominations")
  assert sp.is_word_start(ids)[0] and len(ids) > 1 and not any(sp.is_word_start(ids)[1:])
  wp = load_tokenizer(wordpiece_dir)
  ids = wp.encode("unaffable cats")
  assert [wp.id_to_token(i) for i in ids] == ["un", "##aff", "##able", "cat", "##s"]
  assert wp.is_word_start(ids) == [True, False, False, True, False]


def test_wordpiece_offsets_and_lowercase(wordpiece_dir):
  tokenizer = load_tokenizer(wordpiece_dir)
  assert tokenizer.lowercase
  text = "The Cat sat, unaffable."
  ids, spans = tokenizer.encode_with_offsets(text)
  assert [text[s:e] for s, e in spans] == ["The", "Cat", "sat", ",", "un", "aff", "able", "."]
  assert tokenizer.tokenize("THE CAT") == ["the", "cat"]


def test_save_and_load_round_trip(spm_dir, wordpiece_dir, tmp_path):
  for directory in (spm_dir, wordpiece_dir):
    original = load_tokenizer(directory)
    target = str(tmp_path / original.kind)
    original.save(target)
    again = load_tokenizer(target)
    assert again.kind == original.kind and again.vocab_size == original.vocab_size
    assert again.encode("the cat sat on the mat.") == original.encode("the cat sat on the mat.")


def test_errors(tmp_path, small_corpus):
  with pytest.raises(FlaxbertError, match="no such tokenizer directory"):
    load_tokenizer(str(tmp_path / "absent"))
  with pytest.raises(FlaxbertError, match="not a tokenizer directory"):
    load_tokenizer(str(tmp_path))
  with pytest.raises(FlaxbertError, match="too small"):
    train_sentencepiece([small_corpus], 100, str(tmp_path / "tiny"))
  (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nthe\nthe\n", encoding="utf-8")
  with pytest.raises(FlaxbertError, match=r"vocab.txt:4: duplicate token 'the'"):
    WordPieceTokenizer(str(tmp_path / "vocab.txt"))
  assert not os.path.exists(tmp_path / "tiny" / "spm.model")


def test_round_trip_of_corpus_lines(spm_dir, small_corpus, wordpiece_dir):
  tokenizer = load_tokenizer(spm_dir)
  with open(small_corpus, encoding="utf-8") as f:
    lines = [line.strip() for line in f if line.strip()][:300]
  assert [tokenizer.decode(ids) for ids in tokenizer.encode_batch(lines)] == lines
  wordpiece = load_tokenizer(wordpiece_dir)   # lowercasing, so lowercase text round-trips
  assert wordpiece.decode(wordpiece.encode("the cat sat on the mat.")) == "the cat sat on the mat."
