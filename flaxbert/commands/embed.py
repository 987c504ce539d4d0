"""`flaxbert embed`: feature extraction."""

from __future__ import annotations


def run_embed(args) -> None:
  from flaxbert.inference.embed import embed_file
  from flaxbert import bundle as bundle_lib
  bundle = bundle_lib.load(args.bundle)
  result = embed_file(bundle, args.input, args.output, max_length=args.max_length,
                      batch_size=args.batch_size, show_progress=not args.quiet)
  n, s, h = result["hidden"].shape
  print(f"wrote {args.output}: {n} texts, hidden {n}x{s}x{h}, pooled {n}x{h}")


def register(sub) -> None:
  p = sub.add_parser("embed", help="extract hidden states and pooled vectors for texts")
  p.add_argument("bundle", help="bundle or HF BERT checkpoint directory")
  p.add_argument("--input", required=True,
                 help="UTF-8 file: one text per line, or two tab-separated texts for a pair")
  p.add_argument("--output", required=True, help="output .npz (hidden, mask, pooled, input_ids)")
  p.add_argument("--max-length", type=int, default=128, help="tokens per row, [CLS]/[SEP] "
                 "included (default 128)")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=run_embed)
