"""Pretraining batches: shapes, caching, per-process shards, exact resume."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from flaxbert.data import pipeline
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(pipeline.__file__))))
FIELDS = {"input_ids": ((4, 64), np.int32), "segment_ids": ((4, 64), np.int32),
          "input_mask": ((4, 64), np.int32), "masked_positions": ((4, 10), np.int32),
          "masked_ids": ((4, 10), np.int32), "masked_weights": ((4, 10), np.float32),
          "nsp_label": ((4,), np.int32)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("prepared"))


def _batches(small_corpus, spm_dir, data_dir, **kwargs):
  settings = dict(batch_size=4, seq_length=64, seed=5, process_index=0, process_count=1)
  settings.update(kwargs)
  return pipeline.pretraining_batches([small_corpus], spm_dir, data_dir, **settings)


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batch_fields_and_shapes(small_corpus, spm_dir, data_dir):
  batch = next(_batches(small_corpus, spm_dir, data_dir))
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == FIELDS
  assert set(np.unique(batch["nsp_label"])) <= {0, 1}
  assert np.all(batch["input_ids"][:, 0] == 2)   # [CLS]


def test_second_run_reuses_prepared_data(small_corpus, spm_dir, data_dir):
  _batches(small_corpus, spm_dir, data_dir)
  prepared = os.path.join(data_dir, "pretraining_pairs")
  before = {d: os.path.getmtime(os.path.join(prepared, d)) for d in os.listdir(prepared)}
  _batches(small_corpus, spm_dir, data_dir)
  after = {d: os.path.getmtime(os.path.join(prepared, d)) for d in os.listdir(prepared)}
  assert before == after and len(after) == 1
  _batches(small_corpus, spm_dir, data_dir, seq_length=32)   # other settings: a new dataset
  assert len(os.listdir(prepared)) == 2


def test_resume_yields_exactly_the_next_batches(small_corpus, spm_dir, data_dir):
  iterator = _batches(small_corpus, spm_dir, data_dir)
  for _ in range(3):
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))   # must survive JSON
  expected = [next(iterator) for _ in range(3)]
  resumed = _batches(small_corpus, spm_dir, data_dir)
  resumed.set_state(state)
  assert all(_equal(e, next(resumed)) for e in expected)


def test_resume_across_an_epoch_boundary_redraws_the_same_masks(small_corpus, spm_dir,
                                                                 data_dir):
  iterator = _batches(small_corpus, spm_dir, data_dir, batch_size=32)
  # The resume point (batch 25) is in epoch 0; the batches compared reach into epoch 1.
  assert 25 * 32 < iterator.num_records < 40 * 32
  batches = [next(iterator) for _ in range(40)]
  resumed = _batches(small_corpus, spm_dir, data_dir, batch_size=32)
  for _ in range(25):
    next(resumed)
  fresh = _batches(small_corpus, spm_dir, data_dir, batch_size=32)
  fresh.set_state(resumed.get_state())
  assert all(_equal(batches[i], next(fresh)) for i in range(25, 40))


def test_processes_split_the_global_batch(small_corpus, spm_dir, data_dir):
  whole = _batches(small_corpus, spm_dir, data_dir, batch_size=8)
  halves = [_batches(small_corpus, spm_dir, data_dir, batch_size=8, process_index=i,
                     process_count=2) for i in range(2)]
  for _ in range(3):
    full = next(whole)
    parts = [next(h) for h in halves]
    assert parts[0]["input_ids"].shape == (4, 64)
    for key in full:
      np.testing.assert_array_equal(full[key], np.concatenate([p[key] for p in parts]))


def test_batch_size_must_divide_among_processes(small_corpus, spm_dir, data_dir):
  with pytest.raises(FlaxbertError, match="does not divide"):
    _batches(small_corpus, spm_dir, data_dir, batch_size=5, process_count=2)


def test_state_from_other_settings_is_refused(small_corpus, spm_dir, data_dir):
  state = _batches(small_corpus, spm_dir, data_dir).get_state()
  other = _batches(small_corpus, spm_dir, data_dir, seed=6)
  with pytest.raises(FlaxbertError, match="other data or batch settings"):
    other.set_state(state)


def test_whole_word_batches(small_corpus, spm_dir, data_dir):
  batch = next(_batches(small_corpus, spm_dir, data_dir, whole_word=True))
  assert batch["masked_weights"].sum() > 0


def test_worker_processes_give_the_same_batches_and_resume(small_corpus, spm_dir, data_dir):
  serial = _batches(small_corpus, spm_dir, data_dir)
  expected = [next(serial) for _ in range(6)]
  workers = _batches(small_corpus, spm_dir, data_dir, worker_count=2)
  assert all(_equal(expected[i], next(workers)) for i in range(3))
  state = json.loads(json.dumps(workers.get_state()))
  resumed = _batches(small_corpus, spm_dir, data_dir, worker_count=2)
  resumed.set_state(state)
  assert all(_equal(expected[i], next(resumed)) for i in range(3, 6))
  with pytest.raises(FlaxbertError, match="other data or batch settings"):
    serial.set_state(state)


@pytest.fixture(scope="module")
def many_batches(small_corpus, spm_dir, data_dir):
  """Batches of seq 128 until at least 100k real tokens were seen."""
  iterator = _batches(small_corpus, spm_dir, data_dir, batch_size=128, seq_length=128)
  batches, tokens = [], 0
  while tokens < 100_000:
    batches.append(next(iterator))
    tokens += int(batches[-1]["input_mask"].sum())
  return batches, iterator.num_records


def test_masking_rate_and_replacement_split_over_100k_tokens(many_batches, spm_dir):
  batches, _ = many_batches
  tokenizer = load_tokenizer(spm_dir)
  tokens = sum(int(b["input_mask"].sum()) for b in batches)
  masked = sum(float(b["masked_weights"].sum()) for b in batches)
  assert tokens >= 100_000
  assert abs(masked / tokens - 0.15) <= 0.01, masked / tokens
  kinds = {"mask": 0, "random": 0, "same": 0}
  for b in batches:
    chosen = b["masked_weights"] > 0
    shown = np.take_along_axis(b["input_ids"], b["masked_positions"], 1)[chosen]
    original = b["masked_ids"][chosen]
    kinds["mask"] += int(np.sum(shown == tokenizer.mask_id))
    kinds["same"] += int(np.sum(shown == original))
    kinds["random"] += int(np.sum((shown != tokenizer.mask_id) & (shown != original)))
  total = sum(kinds.values())
  assert total == masked
  # "same" includes the ~0.1% of random draws that hit the original token.
  for kind, share in (("mask", 0.8), ("random", 0.1), ("same", 0.1)):
    assert abs(kinds[kind] / total - share) <= 0.02, (kind, kinds[kind] / total)


def test_special_tokens_and_padding_never_masked(many_batches, spm_dir):
  batches, _ = many_batches
  tokenizer = load_tokenizer(spm_dir)
  specials = np.array(sorted(tokenizer.special_ids))
  for b in batches:
    chosen = b["masked_weights"] > 0
    lengths = b["input_mask"].sum(1)
    assert np.all(b["masked_positions"][chosen] < np.repeat(lengths, chosen.sum(1)))
    assert not np.isin(b["masked_ids"][chosen], specials).any()
    assert np.all(b["masked_positions"][~chosen] == 0) and np.all(b["masked_ids"][~chosen] == 0)
    # Specials stay where they were: [CLS] first, two [SEP], [PAD] exactly on the padding;
    # [MASK] appears only at masked positions.
    assert np.all(b["input_ids"][:, 0] == tokenizer.cls_id)
    assert np.all((b["input_ids"] == tokenizer.sep_id).sum(1) == 2)
    np.testing.assert_array_equal(b["input_ids"] == tokenizer.pad_id, b["input_mask"] == 0)
    is_masked = np.zeros(b["input_ids"].shape, bool)
    np.put_along_axis(is_masked, b["masked_positions"], chosen, 1)
    assert not np.any((b["input_ids"] == tokenizer.mask_id) & ~is_masked)


def test_segment_ids_and_separators(many_batches, spm_dir):
  batches, _ = many_batches
  tokenizer = load_tokenizer(spm_dir)
  for b in batches:
    for ids, segments, mask in zip(b["input_ids"], b["segment_ids"], b["input_mask"]):
      n = int(mask.sum())
      np.testing.assert_array_equal(mask, np.arange(len(mask)) < n)
      seps = np.flatnonzero(ids == tokenizer.sep_id)
      assert ids[0] == tokenizer.cls_id and len(seps) == 2 and seps[1] == n - 1
      assert 1 < seps[0] < n - 2   # both segments hold text: [CLS] A [SEP] B [SEP]
      expected = np.zeros(len(ids), np.int32)
      expected[seps[0] + 1:n] = 1
      np.testing.assert_array_equal(segments, expected)


def test_nsp_labels_about_half(small_corpus, spm_dir, data_dir):
  iterator = _batches(small_corpus, spm_dir, data_dir, batch_size=128, seq_length=128,
                      num_epochs=1)
  labels = np.concatenate([b["nsp_label"] for b in iterator])
  assert len(labels) > 300
  assert 0.42 < labels.mean() < 0.58, labels.mean()


def test_same_seed_same_batches(small_corpus, spm_dir, data_dir):
  first = [next(_batches(small_corpus, spm_dir, data_dir)) for _ in range(2)]
  assert _equal(*first)
  one, two = _batches(small_corpus, spm_dir, data_dir), _batches(small_corpus, spm_dir, data_dir)
  assert all(_equal(next(one), next(two)) for _ in range(5))
  other = next(_batches(small_corpus, spm_dir, data_dir, seed=6))
  assert not _equal(first[0], other)


def test_shard_indices_are_disjoint_and_cover_every_record():
  for num_records, batch_size in ((1001, 8), (64, 16), (5, 4)):
    shards = []
    for process in range(2):
      rows = np.concatenate(list(pipeline.batched_indices(
          num_records, batch_size=batch_size, seed=3, shuffle=True, num_epochs=1,
          drop_remainder=False, process_index=process, process_count=2)))
      assert np.all(rows[:, 0] == 0)
      shards.append(rows[:, 1][rows[:, 1] >= 0])
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert sorted(np.concatenate(shards).tolist()) == list(range(num_records))
  # Each epoch is a new permutation of all records.
  rows = np.concatenate([pipeline.batched_indices(
      100, batch_size=10, seed=3, shuffle=True, num_epochs=2, drop_remainder=True,
      process_index=0, process_count=1)[i] for i in range(20)])
  first, second = rows[:100, 1], rows[100:, 1]
  assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(100))
  assert not np.array_equal(first, second)


def _finetune_rows(tmp_path, spm_dir, data_dir):
  from data_fixtures import head_lines, shared
  train = head_lines(shared("sentiment", "train.tsv"), str(tmp_path / "train.tsv"), 203)
  return pipeline.finetune_data("classification", {"train": train}, spm_dir, data_dir,
                                max_seq_length=32)


def _rows(batches):
  return [tuple(ids.tolist()) for b in batches
          for ids, weight in zip(b["input_ids"], b["example_weight"]) if weight]


def test_two_processes_get_disjoint_shards_covering_the_data(tmp_path, spm_dir, data_dir):
  data = _finetune_rows(tmp_path, spm_dir, data_dir)
  everything = _rows(data.batches("train", batch_size=8, shuffle=False, num_epochs=1,
                                  drop_remainder=False, process_index=0, process_count=1))
  assert len(everything) == 202 == len(set(everything))
  shards = [_rows(data.batches("train", batch_size=8, seed=1, num_epochs=1,
                               drop_remainder=False, process_index=i, process_count=2))
            for i in range(2)]
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(everything)


_CHILD = """
import json, sys
import jax
jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", 2, int(sys.argv[2]))
from flaxbert.data import pipeline
data = pipeline.finetune_data("classification", {"train": sys.argv[3]}, sys.argv[4],
                              sys.argv[5], max_seq_length=32)
rows = [ids.tolist() for b in data.batches("train", batch_size=8, seed=1, num_epochs=1,
                                           drop_remainder=False)
        for ids, weight in zip(b["input_ids"], b["example_weight"]) if weight]
print(json.dumps({"process": [jax.process_index(), jax.process_count()], "rows": rows}))
"""


def test_two_real_jax_processes_get_disjoint_shards(tmp_path, spm_dir, data_dir):
  """Two CPU processes joined by jax.distributed: each takes its shard from
  jax.process_index() / process_count() (nothing passed in)."""
  data = _finetune_rows(tmp_path, spm_dir, data_dir)   # prepared once, read by both
  everything = _rows(data.batches("train", batch_size=8, shuffle=False, num_epochs=1,
                                  drop_remainder=False, process_index=0, process_count=1))
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
  children = [subprocess.Popen([sys.executable, "-c", _CHILD, str(port), str(i),
                                str(tmp_path / "train.tsv"), spm_dir, data_dir],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env) for i in range(2)]
  outputs = []
  for child in children:
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err[-2000:]
    outputs.append(json.loads(out.strip().splitlines()[-1]))
  assert [o["process"] for o in outputs] == [[0, 2], [1, 2]]
  shards = [{tuple(r) for r in o["rows"]} for o in outputs]
  assert not shards[0] & shards[1]
  assert sorted(shards[0] | shards[1]) == sorted(everything)
  assert len(outputs[0]["rows"]) + len(outputs[1]["rows"]) == len(everything)
