"""Length-bucketed batching: order restored, only bucket shapes compiled, results unchanged."""

import jax
import numpy as np
import pytest

from conftest import make_hf_checkpoint
from flaxbert.inference import bucketing, embed
from flaxbert import bundle as bundle_lib


def test_buckets():
  assert bucketing.default_buckets(128) == (16, 32, 64, 128)
  assert bucketing.default_buckets(100) == (16, 32, 64, 100)
  assert bucketing.bucket_for(17, (16, 32)) == 32 and bucketing.bucket_for(16, (32, 16)) == 16
  with pytest.raises(ValueError, match="longer than the largest bucket"):
    bucketing.bucket_for(33, (16, 32))


def test_run_bucketed_restores_order_and_pads_to_buckets():
  rng = np.random.default_rng(0)
  rows = [{"input_ids": rng.integers(1, 50, size=n).astype(np.int32),
           "input_mask": np.ones(n, np.int32)} for n in rng.integers(1, 60, size=45)]
  seen = []

  def fn(batch):
    seen.append(batch["input_ids"].shape)
    ids, mask = batch["input_ids"], batch["input_mask"]
    return {"total": (ids * mask).sum(1), "doubled": ids * 2}

  out = bucketing.run_bucketed(fn, rows, 8, (16, 32, 64), per_token=("doubled",))
  for row, total, doubled in zip(rows, out["total"], out["doubled"]):
    assert total == row["input_ids"].sum()
    np.testing.assert_array_equal(doubled, row["input_ids"] * 2)
  assert {s[0] for s in seen} == {8} and {s[1] for s in seen} <= {16, 32, 64}
  assert len(seen) == 6  # ceil(45 / 8)
  padded = bucketing.stack_padded(out["doubled"])
  assert padded.shape == (45, max(len(r["input_ids"]) for r in rows))


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tiny_hf"))
  make_hf_checkpoint(directory, num_hidden_layers=2, seed=7)
  return bundle_lib.load(directory)


def test_embed_bucketed_equals_unbucketed(tiny_bundle):
  rng = np.random.default_rng(1)
  texts = [(" ".join("abcdefgh"[rng.integers(0, 8)] * int(rng.integers(1, 4))
                     for _ in range(int(rng.integers(1, 40)))), None) for _ in range(29)]
  ids, segments, mask = embed.encode_rows(tiny_bundle.tokenizer, texts, 64)
  assert len(set(mask.sum(1))) > 10  # a real spread of lengths
  hidden, pooled = embed.embed_arrays(tiny_bundle, ids, segments, mask, 8, show_progress=False)
  # Unbucketed: the whole padded array in one call, in input order.
  want = jax.jit(embed.make_features_fn(tiny_bundle))(
      embed.encoder_variables(tiny_bundle), {"input_ids": ids, "segment_ids": segments, "input_mask": mask})
  # Equal up to float rounding: XLA's CPU matmuls may block and thread a batch of 8 rows
  # and one of 29 differently (seen: 1 ulp on a loaded machine); a row in the wrong place
  # or a padding leak would differ by O(1).
  np.testing.assert_allclose(hidden, np.asarray(want["hidden"]), rtol=0, atol=1e-5)
  np.testing.assert_allclose(pooled, np.asarray(want["pooled"]), rtol=0, atol=1e-5)

  # The compiled cache holds one function per (batch, bucket) shape, reused across calls.
  rows = tiny_bundle.tokenizer.encode_inputs(texts, 64)
  fn = bucketing.CompiledCache(embed.make_features_fn(tiny_bundle),
                               embed.encoder_variables(tiny_bundle))
  first = embed.embed_rows(tiny_bundle, rows, 8, (16, 32, 64), False, fn)
  shapes = len(fn.shapes)
  again = embed.embed_rows(tiny_bundle, rows[::-1], 8, (16, 32, 64), False, fn)
  assert len(fn.shapes) == shapes <= 3
  for a, b in zip(first["pooled"], again["pooled"][::-1]):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
