"""`flaxbert wordvec`: context-free word vectors (flaxbert/wordvec/).

  flaxbert wordvec train --corpus FILE... --out DIR [--model skipgram|cbow] [--subword] ...
  flaxbert wordvec evaluate VECTORS [--similarity TSV] [--analogy FILE]     JSON
  flaxbert wordvec neighbors VECTORS WORD|"a - b + c" [-k 10]
  flaxbert wordvec analogy VECTORS "paris - france + italy" [-k 1]
  flaxbert wordvec convert VECTORS OUT --to word2vec|word2vec-binary|glove
"""

from __future__ import annotations

import json

from flaxbert.commands.flags import add_config_arguments, config_from_args
from flaxbert.errors import FlaxbertError
from flaxbert.wordvec.config import WordvecConfig


def run_train(args) -> None:
  from flaxbert.wordvec.train import train
  summary = train(config_from_args(WordvecConfig, args))
  print(f"wrote {summary['vectors']}: {summary['vocabulary']} words x "
        f"{args.dim}, {summary['epochs']} epochs of {summary['raw_words']} words"
        + (f", {summary['words_per_s']:.0f} words/s" if summary["words_per_s"] else ""))


def run_evaluate(args) -> None:
  from flaxbert.wordvec import evaluate, formats
  if not args.similarity and not args.analogy:
    raise FlaxbertError("give --similarity TSV and/or --analogy FILE")
  vectors = formats.read_vectors(args.vectors)
  result = {"vectors": args.vectors, "words": len(vectors.words),
            "dim": int(vectors.matrix.shape[1])}
  for path in args.similarity or ():
    result.setdefault("similarity", {})[path] = evaluate.similarity(vectors, path)
  for path in args.analogy or ():
    result.setdefault("analogy", {})[path] = evaluate.analogies(vectors, path)
  print(json.dumps(result, indent=1))


def run_neighbors(args) -> None:
  from flaxbert.wordvec import evaluate, formats
  vectors = formats.read_vectors(args.vectors)
  for word, cosine in evaluate.neighbors(vectors, args.query, args.k):
    print(f"{word}\t{cosine:.4f}")


def run_convert(args) -> None:
  import os
  from flaxbert.errors import os_error_line
  from flaxbert.output_dir import check_new
  from flaxbert.wordvec import formats
  vectors = formats.read_vectors(args.vectors)
  out = check_new(args.out, "OUT")
  partial = out + ".partial"
  try:   # written beside, then renamed: a failure never leaves half a file at OUT
    formats.write(partial, vectors, args.to)
    os.replace(partial, out)
  except OSError as e:
    raise FlaxbertError(os_error_line(e, out)) from None
  print(f"wrote {args.out}: {len(vectors.words)} words x {vectors.matrix.shape[1]} ({args.to})")


def register(sub) -> None:
  p = sub.add_parser("wordvec", help="train, evaluate and query context-free word vectors "
                     "(word2vec skip-gram/CBOW, fastText subwords)")
  commands = p.add_subparsers(dest="wordvec_command", metavar="ACTION", required=True)
  t = commands.add_parser("train", help="train word vectors on a corpus (resumable)")
  add_config_arguments(t, WordvecConfig)
  t.set_defaults(func=run_train)

  e = commands.add_parser("evaluate", help="word similarity (Spearman) and analogies "
                          "(3CosAdd, 3CosMul), as JSON")
  e.add_argument("vectors", metavar="VECTORS", help="word2vec text or binary, GloVe, .vec")
  e.add_argument("--similarity", action="append", metavar="TSV", help="word, word, human "
                 "score per line (WordSim-353 style); repeatable")
  e.add_argument("--analogy", action="append", metavar="FILE", help="questions-words.txt "
                 "format; repeatable")
  e.set_defaults(func=run_evaluate)

  for name, k, what in (("neighbors", 10, "nearest words by cosine"),
                        ("analogy", 1, "the answer of an analogy")):
    n = commands.add_parser(name, help=f"{what} to a word or to 'a - b + c'")
    n.add_argument("vectors", metavar="VECTORS")
    n.add_argument("query", metavar="QUERY", help="a word, or e.g. 'paris - france + italy'")
    n.add_argument("-k", type=int, default=k, help="answers shown (default: %(default)s)")
    n.set_defaults(func=run_neighbors)

  c = commands.add_parser("convert", help="rewrite vectors in another format")
  c.add_argument("vectors", metavar="VECTORS")
  c.add_argument("out", metavar="OUT", help="new file")
  c.add_argument("--to", required=True, choices=("word2vec", "word2vec-binary", "glove"))
  c.set_defaults(func=run_convert)
