"""Greedy vs beam-search decoding speed on CPU, as JSON: generated tokens per second.

    python bench/decoding_speed.py BUNDLE SOURCES.tsv [--examples 200] [--beams 1 4]

Each setting is run once to compile (not timed), then timed over the same sources.
"""

import argparse
import json
import time

from flaxbert import bundle as bundle_lib
from flaxbert.tasks.seq2seq import read_texts, translate


def main():
  p = argparse.ArgumentParser()
  p.add_argument("bundle")
  p.add_argument("sources")
  p.add_argument("--examples", type=int, default=200)
  p.add_argument("--beams", type=int, nargs="+", default=[1, 4])
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--max-length", type=int, default=32)
  args = p.parse_args()
  bundle = bundle_lib.load_encdec_bundle(args.bundle)
  texts = read_texts(args.sources)[0][:args.examples]   # a TSV's sources, header skipped
  results = {"examples": len(texts), "batch_size": args.batch_size,
             "max_length": args.max_length}
  for beam in args.beams:
    kwargs = dict(max_source_length=args.max_length, max_length=args.max_length,
                  beam_size=beam, batch_size=args.batch_size)
    translate(bundle.model, bundle.params, bundle.tokenizer, texts[:args.batch_size], **kwargs)
    start = time.perf_counter()
    _, tokens = translate(bundle.model, bundle.params, bundle.tokenizer, texts, **kwargs)
    seconds = time.perf_counter() - start
    results["greedy" if beam == 1 else f"beam{beam}"] = {
        "tokens": tokens, "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1)}
  print(json.dumps(results))


if __name__ == "__main__":
  main()
