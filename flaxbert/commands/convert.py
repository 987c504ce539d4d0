"""`flaxbert convert`: HF BERT checkpoints <-> bundles."""

from __future__ import annotations


def run_convert(args) -> None:
  from flaxbert import bundle as bundle_lib
  if args.from_hf:
    bundle = bundle_lib.import_hf(args.from_hf)
    bundle_lib.save(args.out, bundle)
    print(f"wrote bundle {args.out} ({bundle.head} head, {bundle.config.num_layers} layers, "
          f"hidden {bundle.config.hidden_size}, {bundle.tokenizer.kind} tokenizer)")
  else:
    bundle = bundle_lib.load(args.to_hf)
    bundle_lib.export_hf(bundle, args.out)
    print(f"wrote HF checkpoint {args.out} ({bundle.head} head)")


def register(sub) -> None:
  p = sub.add_parser("convert", help="convert between HF BERT checkpoints and flaxbert bundles")
  direction = p.add_mutually_exclusive_group(required=True)
  direction.add_argument("--from-hf", metavar="DIR", help="HF BERT checkpoint directory to import")
  direction.add_argument("--to-hf", metavar="BUNDLE", help="bundle to export as an HF checkpoint")
  p.add_argument("--out", required=True, help="new output directory")
  p.set_defaults(func=run_convert)
