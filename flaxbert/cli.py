"""The `flaxbert` command: argument parsing and a call into the library per subcommand.

Bad input surfaces as `FlaxbertError`, printed as one line (`flaxbert: error: ...`) with exit
status 2; an interrupt exits 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from flaxbert.errors import FlaxbertError

EXIT_USER_ERROR = 2


def _cmd_convert(args) -> None:
  from flaxbert.interop import bundle as bundle_lib
  if args.from_hf:
    bundle = bundle_lib.import_hf(args.from_hf)
    bundle_lib.save(args.out, bundle)
    print(f"wrote bundle {args.out} ({bundle.head} head, {bundle.config.num_layers} layers, "
          f"hidden {bundle.config.hidden_size}, {bundle.tokenizer.kind} tokenizer)")
  else:
    bundle = bundle_lib.load(args.to_hf)
    bundle_lib.export_hf(bundle, args.out)
    print(f"wrote HF checkpoint {args.out} ({bundle.head} head)")


def _cmd_embed(args) -> None:
  from flaxbert.inference.embed import embed_file
  from flaxbert.interop import bundle as bundle_lib
  bundle = bundle_lib.load(args.bundle)
  result = embed_file(bundle, args.input, args.output, max_length=args.max_length,
                      batch_size=args.batch_size, show_progress=not args.quiet)
  n, s, h = result["hidden"].shape
  print(f"wrote {args.output}: {n} texts, hidden {n}x{s}x{h}, pooled {n}x{h}")


def _cmd_tokenizer_train(args) -> None:
  from flaxbert.data.tokenizer import train_sentencepiece
  tokenizer = train_sentencepiece(args.input, args.vocab_size, args.output,
                                  lowercase=args.lowercase, max_sentences=args.max_sentences)
  print(f"wrote tokenizer {args.output}: SentencePiece BPE, {tokenizer.vocab_size} pieces")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="flaxbert", description="BERT and Transformer encoder-decoders in JAX/Flax.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

  p = sub.add_parser("convert", help="convert between HF BERT checkpoints and flaxbert bundles")
  direction = p.add_mutually_exclusive_group(required=True)
  direction.add_argument("--from-hf", metavar="DIR", help="HF BERT checkpoint directory to import")
  direction.add_argument("--to-hf", metavar="BUNDLE", help="bundle to export as an HF checkpoint")
  p.add_argument("--out", required=True, help="new output directory")
  p.set_defaults(func=_cmd_convert)

  p = sub.add_parser("embed", help="extract hidden states and pooled vectors for texts")
  p.add_argument("bundle", help="bundle or HF BERT checkpoint directory")
  p.add_argument("--input", required=True,
                 help="UTF-8 file: one text per line, or two tab-separated texts for a pair")
  p.add_argument("--output", required=True, help="output .npz (hidden, mask, pooled, input_ids)")
  p.add_argument("--max-length", type=int, default=128, help="tokens per row, [CLS]/[SEP] "
                 "included (default 128)")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=_cmd_embed)

  p = sub.add_parser("tokenizer", help="tokenizer tools")
  tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
  t = tsub.add_parser("train", help="train a SentencePiece BPE tokenizer on text files")
  t.add_argument("--input", nargs="+", required=True, metavar="FILE")
  t.add_argument("--vocab-size", type=int, required=True)
  t.add_argument("--output", required=True, metavar="DIR")
  t.add_argument("--lowercase", action="store_true")
  t.add_argument("--max-sentences", type=int, default=2_000_000,
                 help="sentences sampled from the corpus for training (default 2,000,000)")
  t.set_defaults(func=_cmd_tokenizer_train)
  return parser


def _quiet_libraries() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
  for noisy in ("absl", "jax", "orbax", "etils"):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:
    pass


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  _quiet_libraries()
  try:
    args.func(args)
  except FlaxbertError as e:
    print(f"flaxbert: error: {e}", file=sys.stderr)
    return EXIT_USER_ERROR
  except KeyboardInterrupt:
    print("flaxbert: interrupted", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
