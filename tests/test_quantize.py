"""Weight-only int8: per-output-channel scales, bounded error, and a trained classifier whose
int8 export agrees with float32 on >= 98% of sentiment dev rows."""

import importlib.util
import os

import numpy as np

from conftest import REPO, SHARED_DATA
from flaxbert.inference import quantize


def _bench_module():
  spec = importlib.util.spec_from_file_location(
      "int8_sentiment", os.path.join(REPO, "bench", "int8_sentiment.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_per_channel_scales_and_error_bound():
  rng = np.random.default_rng(0)
  flat = {"bert/encoder/layers/attention/qkv/kernel": rng.normal(size=(2, 8, 3, 2, 4)),
          "bert/encoder/layers/attention/qkv/bias": rng.normal(size=(2, 3, 2, 4)),
          "bert/encoder/layers/attention/out/kernel": rng.normal(size=(2, 2, 4, 8)),
          "bert/encoder/layers/attention/out/bias": rng.normal(size=(2, 8)),
          "bert/pooler/dense/kernel": rng.normal(size=(8, 8)) * np.arange(1, 9),
          "bert/pooler/dense/bias": rng.normal(size=(8,)),
          "bert/embeddings/word_embeddings/embedding": rng.normal(size=(30, 8))}
  flat = {k: v.astype(np.float32) for k, v in flat.items()}
  q = quantize.quantize(flat)
  # Scales per layer and output channel: reduced over the input axes only.
  assert q["bert/encoder/layers/attention/qkv/kernel:scale"].shape == (2, 1, 3, 2, 4)
  assert q["bert/encoder/layers/attention/out/kernel:scale"].shape == (2, 1, 1, 8)
  assert q["bert/pooler/dense/kernel:scale"].shape == (1, 8)
  assert q["bert/embeddings/word_embeddings/embedding"].dtype == np.float32
  deq = quantize.dequantize(q)
  for path in quantize.dense_kernels(flat):
    assert q[path].dtype == np.int8 and np.abs(q[path]).max() == 127
    error = np.abs(np.asarray(deq[path]) - flat[path])
    assert np.all(error <= q[path + ":scale"] / 2 + 1e-6), path
  report = quantize.size_report(flat, q)
  assert report["quantized_kernels"] == 3 and report["int8_bytes"] < report["float_bytes"]


def test_int8_trained_classifier_agrees_on_dev(minilm_dir, tmp_path):
  bench = _bench_module()
  sentiment = os.path.join(SHARED_DATA, "sentiment")
  texts, labels = bench.read_sentiment(os.path.join(sentiment, "train.tsv"), 300)
  bundle = bench.trained_classifier(minilm_dir, texts, labels, steps=150)
  dev_texts, dev_labels = bench.read_sentiment(os.path.join(sentiment, "dev.tsv"), 300)
  result = bench.compare_int8(bundle, str(tmp_path), dev_texts, dev_labels)
  # The head learned something (3 classes: chance is ~1/3) ...
  assert result["accuracy_float32"] > 0.45, result
  # ... and int8 changes little: predictions agree on >= 98% of dev rows, logits stay within
  # 0.25 (the float32 logits span several units), accuracy within 2 points.
  assert result["agreement"] >= 0.98, result
  assert result["max_abs_logit_diff"] < 0.25, result
  assert abs(result["accuracy_int8"] - result["accuracy_float32"]) <= 0.02, result
  assert result["size_reduction"] > 1.5, result
