"""`flaxbert tokenizer train`."""

from __future__ import annotations


def run_tokenizer_train(args) -> None:
  from flaxbert.data.tokenizer import train_sentencepiece
  from flaxbert.output_dir import new_directory
  # Refused before training if --output holds anything (say a bundle's tokenizer/), and
  # written into a unique temporary sibling renamed into place, so a failure or a kill never
  # leaves half a tokenizer and nothing of the user's is overwritten.
  with new_directory(args.output, option="--output") as tmp:
    tokenizer = train_sentencepiece(args.input, args.vocab_size, tmp,
                                    lowercase=args.lowercase, max_sentences=args.max_sentences)
  print(f"wrote tokenizer {args.output}: SentencePiece BPE, {tokenizer.vocab_size} pieces")


def register(sub) -> None:
  p = sub.add_parser("tokenizer", help="tokenizer tools")
  tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
  t = tsub.add_parser("train", help="train a SentencePiece BPE tokenizer on text files")
  t.add_argument("--input", nargs="+", required=True, metavar="FILE")
  t.add_argument("--vocab-size", type=int, required=True)
  t.add_argument("--output", required=True, metavar="DIR",
                 help="new tokenizer directory (absent or empty)")
  t.add_argument("--lowercase", action="store_true")
  t.add_argument("--max-sentences", type=int, default=2_000_000,
                 help="sentences sampled from the corpus for training (default 2,000,000)")
  t.set_defaults(func=run_tokenizer_train)
