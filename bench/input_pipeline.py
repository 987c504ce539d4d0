"""Input pipeline throughput: prepare (cold / reused), batches per second, resume latency.

  python bench/input_pipeline.py [--corpus FILE ...] [--batch-size 256] [--seq-length 128]

Prints one JSON object. Without --corpus it uses the embedded default corpus. Everything is
written under a fresh temporary directory unless --work-dir is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time

import numpy as np

from flaxbert.data import pipeline
from flaxbert.data.default_corpus import write_default_corpus
from flaxbert.data.tokenizer import train_sentencepiece


def _timed(fn):
  start = time.perf_counter()
  value = fn()
  return value, time.perf_counter() - start


def _throughput(make_iterator, batches: int) -> dict:
  iterator, first_seconds = _timed(lambda: _first(make_iterator()))
  iterator, _ = iterator
  start = time.perf_counter()
  tokens = 0
  for _ in range(batches):
    batch = next(iterator)
    tokens += int(batch["input_mask"].sum())
  seconds = time.perf_counter() - start
  rows = batches * len(batch["input_ids"])
  return {"first_batch_s": round(first_seconds, 3), "batches_per_s": round(batches / seconds, 2),
          "examples_per_s": round(rows / seconds, 1),
          "real_tokens_per_s": round(tokens / seconds), "batches": batches}


def _first(iterator):
  next(iterator)
  return iterator, None


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--corpus", nargs="*", help="BERT-format text files (default: embedded)")
  parser.add_argument("--work-dir", help="where tokenizer and prepared data go")
  parser.add_argument("--vocab-size", type=int, default=8000)
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--seq-length", type=int, default=128)
  parser.add_argument("--batches", type=int, default=40)
  parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
  parser.add_argument("--workers", type=int, nargs="*", default=[2],
                      help="grain worker process counts to measure")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  work = args.work_dir or tempfile.mkdtemp(prefix="flaxbert-bench-")
  corpus = args.corpus or [write_default_corpus(os.path.join(work, "corpus"))]
  tokenizer_dir = os.path.join(work, "tokenizer")
  data_dir = os.path.join(work, "data")

  _, train_seconds = _timed(lambda: train_sentencepiece(corpus, args.vocab_size, tokenizer_dir))

  def batches(threads=1, **kwargs):
    import grain
    settings = dict(batch_size=args.batch_size, seq_length=args.seq_length, seed=0,
                    process_index=0, process_count=1,
                    read_options=grain.ReadOptions(num_threads=threads, prefetch_buffer_size=8))
    settings.update(kwargs)
    return pipeline.pretraining_batches(corpus, tokenizer_dir, data_dir, **settings)

  first, cold_seconds = _timed(batches)
  _, warm_seconds = _timed(batches)
  result = {
      "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                  "platform": platform.platform()},
      "corpus": {"files": corpus, "bytes": sum(os.path.getsize(p) for p in corpus),
                 "pairs": first.num_records},
      "batch_size": args.batch_size, "seq_length": args.seq_length,
      "tokenizer_train_s": round(train_seconds, 2),
      "prepare_cold_s": round(cold_seconds, 2),
      "prepare_reused_s": round(warm_seconds, 2),
      "throughput": {},
  }
  for threads in args.threads:
    result["throughput"][f"threads={threads}"] = _throughput(lambda: batches(threads),
                                                             args.batches)
  result["throughput"]["whole_word,threads=1"] = _throughput(
      lambda: batches(1, whole_word=True), args.batches)
  for workers in args.workers:
    result["throughput"][f"workers={workers}"] = _throughput(
        lambda: batches(1, worker_count=workers), args.batches)

  iterator = batches()
  for _ in range(5):
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = next(iterator)

  def resume():
    fresh = batches()
    fresh.set_state(state)
    return next(fresh)

  resumed, resume_seconds = _timed(resume)
  result["resume"] = {"seconds_to_first_batch": round(resume_seconds, 3),
                      "identical": all(np.array_equal(expected[k], resumed[k])
                                       for k in expected)}
  print(json.dumps(result, indent=2))
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
