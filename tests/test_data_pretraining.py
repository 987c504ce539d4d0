"""Sentence pairing and dynamic masking (flaxbert.data.pretraining)."""

import random

import numpy as np
import pytest

from flaxbert.data import pretraining
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError


def _documents(rng, count=30):
  next_id = iter(range(100, 10**6))
  return [[np.array([next(next_id) for _ in range(rng.randint(3, 25))], np.int32)
           for _ in range(rng.randint(1, 12))] for _ in range(count)]


def test_default_max_predictions_matches_bert():
  assert pretraining.default_max_predictions(128) == 20
  assert pretraining.default_max_predictions(512) == 77


def test_pairs_fit_and_mix_next_and_random():
  rng = random.Random(0)
  documents = _documents(rng)
  pairs = list(pretraining.create_pairs(documents, 64, random.Random(1)))
  assert all(len(a) >= 1 and len(b) >= 1 and len(a) + len(b) <= 61 for a, b, _ in pairs)
  labels = [label for _, _, label in pairs]
  assert 0.3 < np.mean(labels) < 0.8
  # A continuation is made of consecutive tokens of one document.
  position = {int(t): (d, s) for d, doc in enumerate(documents) for s, sent in enumerate(doc)
              for t in sent}
  for a, b, label in pairs:
    if label == 0:
      assert position[int(a[0])][0] == position[int(b[-1])][0]
      assert int(b[0]) == int(a[-1]) + 1 or position[int(b[0])][1] > position[int(a[-1])][1]


def test_pairs_need_two_documents():
  with pytest.raises(FlaxbertError, match="at least two documents"):
    list(pretraining.create_pairs(_documents(random.Random(0), 1), 64, random.Random(0)))


def _masker(tokenizer, seq_length=64, whole_word=False, seed=3):
  return pretraining.Masker(
      seq_length=seq_length, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
      sep_id=tokenizer.sep_id, mask_id=tokenizer.mask_id, special_ids=tokenizer.special_ids,
      word_start=tokenizer.is_word_start(range(tokenizer.vocab_size)), seed=seed,
      whole_word=whole_word)


def _example(tokenizer):
  a = tokenizer.encode("In the beginning God created the heaven and the earth.")
  b = tokenizer.encode("And the earth was without form, and void; and darkness was upon it.")
  ids, _ = tokenizer.build_inputs(a, b)
  return np.array(ids, np.int32), len(a) + 2


def test_masking_is_deterministic_per_seed_epoch_index(spm_dir):
  tokenizer = load_tokenizer(spm_dir)
  masker = _masker(tokenizer)
  ids, _ = _example(tokenizer)
  first = masker(ids, 1, epoch=0, index=7)
  again = masker(ids, 1, epoch=0, index=7)
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  other_epochs = [masker(ids, 1, epoch=e, index=7)["masked_positions"] for e in range(1, 6)]
  assert any(not np.array_equal(first["masked_positions"], p) for p in other_epochs)


def test_masking_fields(spm_dir):
  tokenizer = load_tokenizer(spm_dir)
  masker = _masker(tokenizer)
  ids, len_a = _example(tokenizer)
  out = masker(ids, 1, epoch=0, index=0)
  n = len(ids)
  assert out["input_ids"].shape == (64,) and out["masked_positions"].shape == (10,)
  count = int(out["masked_weights"].sum())
  assert count == round(0.15 * n)
  positions = out["masked_positions"][:count]
  assert np.all(np.diff(positions) > 0)
  assert not set(ids[positions].tolist()) & set(tokenizer.special_ids)
  np.testing.assert_array_equal(out["masked_ids"][:count], ids[positions])
  unmasked = np.setdiff1d(np.arange(n), positions)
  np.testing.assert_array_equal(out["input_ids"][unmasked], ids[unmasked])
  assert np.all(out["input_ids"][n:] == tokenizer.pad_id)
  np.testing.assert_array_equal(out["input_mask"], (np.arange(64) < n).astype(np.int32))
  np.testing.assert_array_equal(out["segment_ids"][:n], [0] * len_a + [1] * (n - len_a))
  assert out["nsp_label"] == 1


def test_mask_replacement_rates(spm_dir):
  tokenizer = load_tokenizer(spm_dir)
  masker = _masker(tokenizer)
  ids, _ = _example(tokenizer)
  kinds = {"mask": 0, "same": 0, "random": 0}
  for index in range(600):
    out = masker(ids, 0, epoch=0, index=index)
    count = int(out["masked_weights"].sum())
    for position, original in zip(out["masked_positions"][:count], out["masked_ids"][:count]):
      token = out["input_ids"][position]
      kinds["mask" if token == tokenizer.mask_id else
            "same" if token == original else "random"] += 1
  total = sum(kinds.values())
  assert abs(kinds["mask"] / total - 0.8) < 0.03
  assert abs(kinds["same"] / total - 0.1) < 0.03   # includes random draws of the same id
  assert abs(kinds["random"] / total - 0.1) < 0.03


def test_whole_word_masking_masks_every_piece_of_a_word(spm_dir):
  tokenizer = load_tokenizer(spm_dir)
  masker = _masker(tokenizer, seq_length=128, whole_word=True)
  a = tokenizer.encode("Unsearchable riches notwithstanding, abominations multiplied exceedingly.")
  ids = np.array(tokenizer.build_inputs(a, a)[0], np.int32)
  starts = np.array(tokenizer.is_word_start(ids.tolist()))
  assert not starts.all(), "the sentence should contain multi-piece words"
  for index in range(50):
    out = masker(ids, 0, epoch=0, index=index)
    chosen = set(out["masked_positions"][:int(out["masked_weights"].sum())].tolist())
    for position in chosen:   # every piece's word-mates are chosen too
      start = position
      while not starts[start]:
        start -= 1
      end = position + 1
      while end < len(ids) and not starts[end] and ids[end] not in tokenizer.special_ids:
        end += 1
      assert set(range(start, end)) <= chosen


def _long_documents(count=20, sentences=5000, seed=0):
  """Long documents of 1-2 token sentences; token ids run consecutively through the corpus,
  so adjacency of ids means adjacency in the text."""
  rng = np.random.default_rng(seed)
  documents, next_id = [], 100
  for _ in range(count):
    lengths = rng.integers(1, 3, sentences)
    ids = np.arange(next_id, next_id + lengths.sum(), dtype=np.int32)
    next_id += len(ids) + 1000   # a gap between documents
    documents.append(np.split(ids, np.cumsum(lengths)[:-1]))
  return documents


@pytest.fixture(scope="module")
def long_pairs():
  documents = _long_documents()
  doc_of = {}
  for d, doc in enumerate(documents):
    for sentence in doc:
      for t in sentence.tolist():
        doc_of[t] = d
  return list(pretraining.create_pairs(documents, 64, random.Random(7))), doc_of


def test_short_sequences_with_probability_one_tenth(long_pairs):
  pairs, _ = long_pairs
  assert len(pairs) > 2000
  max_tokens = 64 - 3
  lengths = np.array([len(a) + len(b) for a, b, _ in pairs])
  assert lengths.max() == max_tokens
  # Targets are uniform in [2, 61] for a short sequence; a pair fills its target (sentences
  # are 1-2 tokens), so lengths <= 57 come from short targets: 0.1 * 56/60 of all pairs,
  # plus the rare end of a document.
  short = np.mean(lengths <= max_tokens - 4)
  assert 0.075 < short < 0.125, short


def test_segment_b_is_the_continuation_half_the_time(long_pairs):
  pairs, doc_of = long_pairs
  labels = np.array([label for _, _, label in pairs])
  assert 0.46 < labels.mean() < 0.54, labels.mean()
  for a, b, label in pairs:
    # Each segment is a contiguous run of one document's text.
    assert np.all(np.diff(a) == 1) and np.all(np.diff(b) == 1)
    if label == 0:   # the true continuation: same document, right after A (less truncation)
      assert doc_of[int(a[0])] == doc_of[int(b[0])]
      assert 1 <= int(b[0]) - int(a[-1]) <= 3
    else:            # a random segment of another document
      assert doc_of[int(a[0])] != doc_of[int(b[0])]


def test_longer_segment_truncated_at_random_ends():
  front = back = 0
  for seed in range(200):
    a, b = pretraining._truncate_pair(np.arange(100), np.arange(1000, 1010), 61,
                                      random.Random(seed))
    assert len(a) + len(b) == 61 and len(b) == 10   # only the longer side is cut
    assert np.all(np.diff(a) == 1)                  # what is left is contiguous
    front += int(a[0])
    back += 99 - int(a[-1])
  assert front + back == 200 * 49
  assert 0.45 < front / (front + back) < 0.55       # each cut at a random end
  a, b = pretraining._truncate_pair(np.arange(50), np.arange(1000, 1050), 61, random.Random(0))
  assert len(a) + len(b) == 61 and abs(len(a) - len(b)) <= 1   # both cut when both long


def test_masks_do_not_depend_on_the_batch(spm_dir):
  """The same (seed, epoch, index) gets the same masks alone or among other examples, so
  any process, worker or batch size reproduces them."""
  tokenizer = load_tokenizer(spm_dir)
  masker = _masker(tokenizer)
  ids, _ = _example(tokenizer)
  other = ids[:-5].copy()
  other[-1] = tokenizer.sep_id
  together = masker.batch(np.concatenate([other, ids, ids]), [len(other), len(ids), len(ids)],
                          [0, 1, 1], np.array([0, 2, 2]), np.array([9, 7, 8]))
  alone = masker(ids, 1, epoch=2, index=7)
  for key in alone:
    np.testing.assert_array_equal(together[key][1], alone[key])
  assert not np.array_equal(together["masked_positions"][1], together["masked_positions"][2])
