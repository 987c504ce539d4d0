"""Pretraining batches: shapes, caching, per-process shards, exact resume."""

import json
import os

import numpy as np
import pytest

from flaxbert.data import pipeline
from flaxbert.errors import FlaxbertError
from data_fixtures import small_corpus, spm_dir  # noqa: F401  (fixtures)

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
