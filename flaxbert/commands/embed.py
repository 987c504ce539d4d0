"""`flaxbert embed`: feature extraction and sentence embeddings."""

from __future__ import annotations

import argparse


def run_word_vectors(args) -> None:
  import os

  import numpy as np

  from flaxbert.errors import FlaxbertError
  from flaxbert.inference.text_input import read_text_lines
  from flaxbert.inference.word_vectors import word_vectors
  rows = read_text_lines(args.input)
  if any(b is not None for _, b in rows):
    raise FlaxbertError(f"{args.input}: --words takes one text per line, not tab-separated "
                        "pairs")
  texts = [a for a, _ in rows]
  result = word_vectors(args.bundle, texts, max_length=args.max_length,
                        batch_size=args.batch_size, show_progress=not args.quiet)
  words = [w for ws, _ in result for w in ws]
  vectors = np.concatenate([v for _, v in result])
  text = np.concatenate([np.full(len(ws), n, np.int32) for n, (ws, _) in enumerate(result)])
  tmp = args.output + ".partial.npz"   # a kill never leaves a truncated .npz behind
  np.savez(tmp, vectors=vectors, words=np.array(words), text=text)
  os.replace(tmp, args.output)
  print(f"wrote {args.output}: {len(words)} word vectors x {vectors.shape[1]} from "
        f"{len(texts)} texts (mean of each word's sub-tokens, last layer)")


def run_embed(args) -> None:
  if args.words:
    return run_word_vectors(args)
  from flaxbert.inference.embed import embed_file, parse_layers, resolve_pooling
  from flaxbert import bundle as bundle_lib
  bundle = bundle_lib.load(args.bundle)
  layers = parse_layers(",".join(args.layers)) if args.layers is not None else None
  pooling = resolve_pooling(bundle, args.pooling, args.normalize, layers)
  result = embed_file(bundle, args.input, args.output, max_length=args.max_length,
                      batch_size=args.batch_size, pooling=args.pooling,
                      normalize=args.normalize, layers=layers, show_progress=not args.quiet)
  n, s, h = result["hidden"].shape
  print(f"wrote {args.output}: {n} texts, hidden {n}x{s}x{h}, pooled {n}x{h}, embeddings "
        f"{n}x{h} ({pooling.describe(bundle.config.num_layers)})")


def register(sub) -> None:
  p = sub.add_parser("embed", help="extract hidden states, pooled vectors and sentence "
                     "embeddings for texts")
  p.add_argument("bundle", help="bundle or HF BERT checkpoint directory")
  p.add_argument("--input", required=True,
                 help="UTF-8 file: one text per line, or two tab-separated texts for a pair")
  p.add_argument("--output", required=True,
                 help="output .npz (hidden, mask, pooled, embeddings, input_ids)")
  p.add_argument("--max-length", type=int, default=None, help="tokens per row, [CLS]/[SEP] "
                 "included (default: a sentence-transformers checkpoint's max_seq_length, "
                 "else 128)")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--pooling", metavar="cls|pooler|mean|max", default=None,
                 help="how `embeddings` are pooled: the [CLS] state, BERT's pooler output, "
                 "or the mean or max over real tokens (default: a sentence-transformers "
                 "checkpoint's own, else mean)")
  p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                 help="L2-normalise the embeddings (default: as a sentence-transformers "
                 "checkpoint says, else not)")
  # nargs="+": argparse takes "-4" as a value but "-4,-3" as an unknown option, so the
  # layers come space-separated (--layers -4 -3 -2 -1) or after "=" (--layers=-4,-3,-2,-1).
  p.add_argument("--layers", nargs="+", default=None, metavar="L",
                 help="hidden states averaged before pooling: -1 the last layer (default), "
                 "-4 -3 -2 -1 (or --layers=-4,-3,-2,-1) the last four, 0 the embeddings' "
                 "output")
  p.add_argument("--words", action="store_true", help="instead: one contextual vector per "
                 "whitespace-separated word (the mean of its sub-tokens' last-layer states); "
                 "the .npz holds vectors, words and text (the line of each word, from 0)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=run_embed)
