"""Input pipeline benchmark: tokenizer training time and pretraining batches per second.

  python bench/input_pipeline.py [--corpus FILE ...] [--seq-lengths 128 512]
                                 [--batch-size 256] [--batches 100]

Prints one JSON object: `tokenizer_train_s` (SentencePiece BPE on the corpus, by default
`../shared/data/corpus/kjv.txt`), and for each sequence length the sequences/s of the whole
pretraining pipeline (array_record reads, masking, padding, batching; the prepared data
reused): `sequences_per_s` with the default settings, plus each reader configuration in
`throughput`. Everything is written under a fresh temporary directory unless --work-dir is
given. Without the shared corpus, the embedded default corpus is used.
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

KJV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                   "data", "corpus", "kjv.txt")


def _timed(fn):
  start = time.perf_counter()
  value = fn()
  return value, time.perf_counter() - start


def _throughput(iterator, batches: int) -> dict:
  # Start the threads / workers and drain what they prefetched meanwhile, so the timing is
  # the steady rate (the consumer here is faster than the pipeline: the buffer stays empty).
  for _ in range(10):
    next(iterator)
  start = time.perf_counter()
  rows = tokens = 0
  for _ in range(batches):
    batch = next(iterator)
    rows += len(batch["input_ids"])
    tokens += int(batch["input_mask"].sum())
  seconds = time.perf_counter() - start
  return {"sequences_per_s": round(rows / seconds), "real_tokens_per_s": round(tokens / seconds),
          "batches": batches}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--corpus", nargs="*", help="BERT-format text files (default: kjv.txt)")
  parser.add_argument("--work-dir", help="where tokenizer and prepared data go")
  parser.add_argument("--vocab-size", type=int, default=8000)
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--seq-lengths", type=int, nargs="*", default=[128, 512])
  parser.add_argument("--batches", type=int, default=100)
  parser.add_argument("--threads", type=int, nargs="*", default=[1, 2],
                      help="grain read threads to measure")
  parser.add_argument("--workers", type=int, nargs="*", default=[2],
                      help="grain worker process counts to measure")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  work = args.work_dir or tempfile.mkdtemp(prefix="flaxbert-bench-")
  if args.corpus:
    corpus = args.corpus
  elif os.path.isfile(KJV):
    corpus = [os.path.normpath(KJV)]
  else:
    corpus = [write_default_corpus(os.path.join(work, "corpus"))]
  tokenizer_dir = os.path.join(work, "tokenizer")
  data_dir = os.path.join(work, "data")

  _, train_seconds = _timed(lambda: train_sentencepiece(corpus, args.vocab_size, tokenizer_dir))
  result = {
      "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                  "platform": platform.platform()},
      "corpus": {"files": corpus, "bytes": sum(os.path.getsize(p) for p in corpus)},
      "tokenizer_train_s": round(train_seconds, 2), "vocab_size": args.vocab_size,
      "batch_size": args.batch_size, "sequences_per_s": {}, "seq": {},
  }

  for seq_length in args.seq_lengths:
    def batches(threads=None, **kwargs):
      import grain
      settings = dict(batch_size=args.batch_size, seq_length=seq_length, seed=0,
                      process_index=0, process_count=1)
      if threads is not None:
        settings["read_options"] = grain.ReadOptions(num_threads=threads,
                                                     prefetch_buffer_size=8)
      settings.update(kwargs)
      return pipeline.pretraining_batches(corpus, tokenizer_dir, data_dir, **settings)

    first, cold_seconds = _timed(batches)
    _, warm_seconds = _timed(batches)
    report = {"pairs": first.num_records, "prepare_cold_s": round(cold_seconds, 2),
              "prepare_reused_s": round(warm_seconds, 3), "throughput": {}}
    default = _throughput(batches(), args.batches)
    report["throughput"]["default"] = default
    for threads in args.threads:
      report["throughput"][f"threads={threads}"] = _throughput(batches(threads), args.batches)
    report["throughput"]["whole_word"] = _throughput(batches(whole_word=True), args.batches)
    report["throughput"]["packed"] = _throughput(batches(pack=True), args.batches)
    for workers in args.workers:
      report["throughput"][f"workers={workers}"] = _throughput(
          batches(1, worker_count=workers), args.batches)

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
    report["resume"] = {"seconds_to_first_batch": round(resume_seconds, 3),
                        "identical": all(np.array_equal(expected[k], resumed[k])
                                         for k in expected)}
    result["sequences_per_s"][str(seq_length)] = default["sequences_per_s"]
    result["seq"][str(seq_length)] = report
  print(json.dumps(result, indent=2))
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
