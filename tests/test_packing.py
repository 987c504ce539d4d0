"""Packed pretraining rows: the packing plan, the packed batch fields, and the model's
block-diagonal attention (a packed row gives the same outputs as its examples alone)."""

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.data import packing, pipeline
from flaxbert.data.pretraining import Masker
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.models.config import BertConfig
from flaxbert.models.factory import build_model, init_params
from flaxbert.training import objectives
from flaxbert.training.step import make_eval_step


def test_pack_rows_keeps_capacity_order_and_every_example():
  rng = np.random.default_rng(0)
  lengths = rng.integers(5, 129, 2000)
  rows = packing.pack_rows(lengths, 128, 4)
  flat = [p for row in rows for p in row]
  assert sorted(flat) == list(range(2000))
  assert all(sum(lengths[row]) <= 128 and len(row) <= 4 and row == sorted(row)
             for row in rows)
  fill = lengths.sum() / (128 * len(rows))
  assert fill > 0.85, fill            # one example per row would fill 52%
  assert packing.pack_rows([128, 3, 128], 128, 4) == [[0], [1], [2]]


def test_one_epoch_of_packed_rows_holds_every_record_once():
  lengths = np.random.default_rng(1).integers(10, 64, 500)
  plan = packing.PackedGlobalBatches(lengths, seq_length=64, batch_size=8, seed=3,
                                     process_index=0, process_count=1, max_per_row=4)
  epoch_rows = len(plan._epoch_rows(0))
  seen = np.concatenate([plan[b].reshape(-1, 2) for b in range(-(-epoch_rows // 8))])
  seen = seen[seen[:, 1] >= 0]
  first_epoch = seen[seen[:, 0] == 0, 1]
  assert sorted(first_epoch.tolist()) == list(range(500))
  halves = [packing.PackedGlobalBatches(lengths, seq_length=64, batch_size=8, seed=3,
                                        process_index=i, process_count=2, max_per_row=4)
            for i in range(2)]
  for b in (0, 5, epoch_rows // 8 + 3):   # the last one lies in epoch 1
    np.testing.assert_array_equal(np.concatenate([halves[0][b], halves[1][b]]), plan[b])


def _masker(spm_dir, seq_length):
  tokenizer = load_tokenizer(spm_dir)
  return tokenizer, Masker(seq_length=seq_length, vocab_size=tokenizer.vocab_size,
                           pad_id=tokenizer.pad_id, sep_id=tokenizer.sep_id,
                           mask_id=tokenizer.mask_id, special_ids=tokenizer.special_ids,
                           word_start=tokenizer.is_word_start(range(tokenizer.vocab_size)),
                           seed=0)


def _examples(tokenizer, lengths, seed=0):
  rng = np.random.default_rng(seed)
  ids = []
  for n in lengths:
    body = rng.integers(5, tokenizer.vocab_size, n - 3)
    half = len(body) // 2
    ids.append(np.concatenate([[tokenizer.cls_id], body[:half], [tokenizer.sep_id],
                               body[half:], [tokenizer.sep_id]]).astype(np.int32))
  return ids


def test_packed_batch_lays_examples_end_to_end(spm_dir):
  S = 64
  tokenizer, masker = _masker(spm_dir, S)
  lengths = np.array([20, 30, 12, 64, 40])
  ids = _examples(tokenizer, lengths)
  examples = masker.batch(np.concatenate(ids), lengths, np.array([0, 1, 1, 0, 1]),
                          np.zeros(5, np.int64), np.arange(5))
  slots = np.array([[True, True, True], [True, False, False], [True, False, False]])
  out = packing.pack_batch(examples, lengths, slots, seq_length=S, max_predictions=14,
                           pad_id=tokenizer.pad_id)
  np.testing.assert_array_equal(out["input_mask"][0], [1] * 20 + [2] * 30 + [3] * 12 + [0] * 2)
  np.testing.assert_array_equal(out["position_ids"][0, 20:50], np.arange(30))
  np.testing.assert_array_equal(out["input_ids"][0, 20:50], examples["input_ids"][1, :30])
  np.testing.assert_array_equal(out["nsp_positions"][:, 0], [0, 0, 0])
  np.testing.assert_array_equal(out["nsp_positions"][0], [0, 20, 50])
  np.testing.assert_array_equal(out["nsp_label"][0], [0, 1, 1])
  np.testing.assert_array_equal(out["nsp_weights"].sum(1), [3, 1, 1])
  # Every prediction points at its masked token; counts add up per row.
  counts = (examples["masked_weights"] > 0).sum(1)
  np.testing.assert_array_equal(out["masked_weights"].sum(1), [counts[:3].sum(), counts[3],
                                                              counts[4]])
  for row in range(3):
    w = out["masked_weights"][row] > 0
    np.testing.assert_array_equal(
        out["input_ids"][row][out["masked_positions"][row][w]],
        np.concatenate([examples["input_ids"][e][examples["masked_positions"][e][
            examples["masked_weights"][e] > 0]] for e in
            ([0, 1, 2] if row == 0 else [row + 2])]))


def test_packed_row_equals_its_examples_alone(spm_dir):
  """MLM and NSP logits, and the summed losses, of packed rows equal those of the same
  examples in padded rows: attention never crosses examples, positions restart."""
  S = 64
  tokenizer, masker = _masker(spm_dir, S)
  config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2,
                      num_heads=4, intermediate_size=64, max_position_embeddings=S)
  model = build_model(config, "pretraining")
  params = init_params(model, jax.random.key(0))
  lengths = np.array([20, 30, 12, 50, 9])
  ids = _examples(tokenizer, lengths, seed=1)
  examples = masker.batch(np.concatenate(ids), lengths, np.array([0, 1, 1, 0, 1]),
                          np.zeros(5, np.int64), np.arange(5))
  alone = model.apply({"params": params}, examples["input_ids"], examples["segment_ids"],
                      examples["input_mask"], examples["masked_positions"])
  slots = np.array([[True, True, True], [True, True, False]])
  packed = packing.pack_batch(examples, lengths, slots, seq_length=S, max_predictions=24,
                              pad_id=tokenizer.pad_id)
  out = model.apply({"params": params}, packed["input_ids"], packed["segment_ids"],
                    packed["input_mask"], packed["masked_positions"],
                    position_ids=packed["position_ids"], nsp_positions=packed["nsp_positions"])
  rows = [[0, 1, 2], [3, 4]]
  for r, members in enumerate(rows):
    want = np.concatenate([np.asarray(alone["mlm_logits"])[e][examples["masked_weights"][e] > 0]
                           for e in members])
    got = np.asarray(out["mlm_logits"])[r][packed["masked_weights"][r] > 0]
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(np.asarray(out["nsp_logits"])[r, :len(members)],
                               np.asarray(alone["nsp_logits"])[members], atol=2e-5)
  eval_step = jax.jit(make_eval_step(objectives.pretraining(model)))
  a = eval_step(params, {k: jnp.asarray(v) for k, v in examples.items()})
  p = eval_step(params, {k: jnp.asarray(v) for k, v in packed.items()})
  for key in a:
    np.testing.assert_allclose(float(p[key]), float(a[key]), rtol=2e-5, err_msg=key)


def test_packed_pipeline_fills_rows_and_resumes(small_corpus, spm_dir, tmp_path):
  def batches(pack):
    return pipeline.pretraining_batches([small_corpus], spm_dir, str(tmp_path), batch_size=16,
                                        seq_length=512, pack=pack, process_index=0,
                                        process_count=1)
  plain, packed = batches(False), batches(True)
  fill_plain = np.mean([(next(plain)["input_mask"] > 0).mean() for _ in range(10)])
  fill_packed = np.mean([(next(packed)["input_mask"] > 0).mean() for _ in range(10)])
  assert fill_packed > fill_plain + 0.1, (fill_plain, fill_packed)
  b = next(packed)
  cls = b["input_ids"][np.arange(16)[:, None], b["nsp_positions"]]
  assert np.all(cls[b["nsp_weights"] > 0] == load_tokenizer(spm_dir).cls_id)
  starts = np.zeros_like(b["input_mask"], bool)
  rows, slots = np.nonzero(b["nsp_weights"] > 0)
  starts[rows, b["nsp_positions"][rows, slots]] = True
  real = b["input_mask"] > 0
  assert np.all((b["position_ids"] == 0)[real] == starts[real])
  state = packed.get_state()
  expected = next(packed)
  again = batches(True)
  again.set_state(state)
  got = next(again)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])


def test_concurrent_reads_give_the_same_rows():
  """grain's prefetch threads read batches concurrently from a fresh plan (e.g. right after
  a resume): the lazily made epoch plans must not race (they did before the lock)."""
  import threading
  lengths = np.random.default_rng(1).integers(10, 64, 20000)

  def plan():
    return packing.PackedGlobalBatches(lengths, seq_length=64, batch_size=64, seed=3,
                                       process_index=0, process_count=1, max_per_row=4)
  reference = plan()
  want = {b: reference[b] for b in range(200, 216)}   # epoch 1 and on
  for _ in range(3):
    fresh, got = plan(), {}
    threads = [threading.Thread(target=lambda b=b: got.__setitem__(b, fresh[b])) for b in want]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    for b in want:
      np.testing.assert_array_equal(got[b], want[b])
  import pickle
  copy = pickle.loads(pickle.dumps(reference))   # grain's worker processes get a copy
  np.testing.assert_array_equal(copy[205], want[205])
