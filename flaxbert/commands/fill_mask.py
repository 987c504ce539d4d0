"""`flaxbert fill-mask`: the most likely tokens for each [MASK] in texts."""

from __future__ import annotations


def run_fill_mask(args) -> None:
  import json
  from flaxbert.errors import FlaxbertError
  from flaxbert.inference.fill_mask import fill_mask
  from flaxbert.inference.text_input import read_text_lines
  texts = list(args.texts)
  if args.input:
    texts += [a if b is None else f"{a}\t{b}" for a, b in read_text_lines(args.input)]
  if not texts:
    raise FlaxbertError("no text given: pass texts holding [MASK] or --input FILE")
  results = fill_mask(args.bundle, texts, args.top_k, batch_size=args.batch_size,
                      max_length=args.max_length, show_progress=False)
  if args.json:
    print(json.dumps([{"text": text, "masks": masks} for text, masks in zip(texts, results)],
                     ensure_ascii=False, indent=1))
    return
  for text, masks in zip(texts, results):
    print(text)
    for number, candidates in enumerate(masks, start=1):
      if len(masks) > 1:
        print(f"  mask {number} of {len(masks)}:")
      for c in candidates:
        print(f"    {c['score']:.5f}  {c['token']:<15}  {c['sequence']}")


def register(sub) -> None:
  p = sub.add_parser("fill-mask", help="predict the tokens behind each [MASK] in texts "
                     "(a bundle with a masked-LM head)")
  p.add_argument("bundle", help="bundle or HF BERT checkpoint directory with an MLM head")
  p.add_argument("texts", nargs="*", metavar="TEXT",
                 help='texts holding the literal string "[MASK]", one or more times')
  p.add_argument("--input", help="UTF-8 file with more texts, one per line")
  p.add_argument("--top-k", type=int, default=5, help="candidates per mask (default 5)")
  p.add_argument("--json", action="store_true",
                 help="print a JSON list of {text, masks: [[{token, token_id, score, "
                 "sequence}, ...] per mask]}")
  p.add_argument("--max-length", type=int, default=None,
                 help="tokens per text, [CLS]/[SEP] included (default: the model's positions)")
  p.add_argument("--batch-size", type=int, default=32)
  p.set_defaults(func=run_fill_mask)
