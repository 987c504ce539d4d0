"""flaxbert's word2vec against gensim 4.x on one corpus, same hyperparameters and epochs,
as JSON: raw corpus words per second of training (2 worker threads for gensim, which is what
2 cores give; flaxbert's XLA uses the cores it finds), and the word-similarity (WordSim-353,
Spearman) and analogy (questions-words.txt, 3CosAdd and 3CosMul) scores of both, with the
load average.

    python bench/wordvec_vs_gensim.py --corpus /work/shared/data/corpus/kjv.txt
        [--model skipgram|cbow] [--dim 100] [--window 5] [--negative 5] [--min-count 5]
        [--epochs 5] [--batch-size 4096] [--shared-negatives 16] [--workers 2] [--order flaxbert,gensim] [--repeats 3]

The corpus is lower-cased and cut to letters first (both read the same cleaned file, one
sentence per line). gensim's test data gives the evaluation files (pip install gensim).
flaxbert's time includes its jit compile and its per-epoch example making; gensim's its
threads' start; neither includes reading the corpus and building the vocabulary.
"""

import argparse
import json
import os
import re
import tempfile
import time

import gensim
import numpy as np
from gensim.models import Word2Vec
from gensim.test.utils import datapath

from flaxbert.wordvec import evaluate, formats
from flaxbert.wordvec.config import WordvecConfig
from flaxbert.wordvec.train import train


def clean_corpus(path: str, out: str) -> int:
  with open(path, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as g:
    words = 0
    for line in f:
      tokens = re.findall(r"[a-z]+", line.lower())
      if tokens:
        g.write(" ".join(tokens) + "\n")
        words += len(tokens)
  return words


def scores(vectors: formats.Vectors) -> dict:
  sim = evaluate.similarity(vectors, datapath("wordsim353.tsv"))
  ana = evaluate.analogies(vectors, datapath("questions-words.txt"))
  return {"wordsim353_spearman": sim["spearman"], "wordsim353_oov_pairs": sim["oov_pairs"],
          "analogy_3cosadd": ana["3cosadd"], "analogy_3cosmul": ana["3cosmul"],
          "analogy_seen": ana["seen"], "analogy_questions": ana["questions"]}


def run_flaxbert(args, corpus, tmp):
  cfg = WordvecConfig(corpus=(corpus,), workdir=tmp,
                      model=args.model, dim=args.dim, window=args.window,
                      negative=args.negative, min_count=args.min_count, epochs=args.epochs,
                      batch_size=args.batch_size, shared_negatives=args.shared_negatives, seed=args.seed, progress=False)
  summary = train(cfg)
  vectors = formats.read_vectors(summary["vectors"])
  return {"seconds": summary["seconds"], "vocabulary": summary["vocabulary"],
          **scores(vectors)}


def run_gensim(args, corpus, tmp):
  sentences = [line.split() for line in open(corpus, encoding="utf-8")]
  model = Word2Vec(vector_size=args.dim, window=args.window, negative=args.negative,
                   min_count=args.min_count, sg=int(args.model == "skipgram"), hs=0,
                   workers=args.workers, seed=args.seed)
  model.build_vocab(sentences)
  start = time.perf_counter()
  model.train(sentences, total_examples=model.corpus_count, epochs=args.epochs)
  seconds = time.perf_counter() - start
  words = list(model.wv.index_to_key)
  vectors = formats.Vectors(words, np.asarray(model.wv.vectors, np.float32))
  return {"seconds": seconds, "vocabulary": len(words), **scores(vectors)}


def summarise(runs: list[dict]) -> dict:
  """Median words/s and seconds; scores' mean, min and max over the runs (gensim's threads
  make its runs differ; flaxbert's are the same for a seed)."""
  out = {"runs": len(runs), "vocabulary": runs[0]["vocabulary"]}
  for key in ("seconds", "words_per_s"):
    out[key] = float(np.median([r[key] for r in runs]))
  for key in runs[0]:
    if key.startswith(("wordsim353_spearman", "analogy_3cos")):
      values = [r[key] for r in runs]
      out[key] = float(np.mean(values))
      out[key + "_range"] = [min(values), max(values)]
  for key in ("wordsim353_oov_pairs", "analogy_seen", "analogy_questions"):
    out[key] = runs[0][key]
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--corpus", default="/work/shared/data/corpus/kjv.txt")
  p.add_argument("--model", default="skipgram", choices=("skipgram", "cbow"))
  p.add_argument("--dim", type=int, default=100)
  p.add_argument("--window", type=int, default=5)
  p.add_argument("--negative", type=int, default=5)
  p.add_argument("--min-count", type=int, default=5)
  p.add_argument("--epochs", type=int, default=5)
  p.add_argument("--batch-size", type=int, default=4096)
  p.add_argument("--shared-negatives", type=int, default=16)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--seed", type=int, default=1)
  p.add_argument("--order", default="flaxbert,gensim")
  p.add_argument("--repeats", type=int, default=3, help="runs of each, interleaved")
  args = p.parse_args()
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, "corpus.txt")
    raw_words = clean_corpus(args.corpus, corpus)
    runs = {name: [] for name in args.order.split(",")}
    for repeat in range(args.repeats):
      for name in runs:
        workdir = os.path.join(tmp, f"{name}-{repeat}")
        result = {"flaxbert": run_flaxbert, "gensim": run_gensim}[name](args, corpus, workdir)
        result["words_per_s"] = raw_words * args.epochs / result["seconds"]
        runs[name].append(result)
  results = {name: summarise(r) for name, r in runs.items()}
  out = {"corpus": args.corpus, "raw_words": raw_words, "settings": vars(args),
         "gensim_version": gensim.__version__, "load_average_before": load_before, **results,
         "words_per_s_ratio_flaxbert_over_gensim":
             results["flaxbert"]["words_per_s"] / results["gensim"]["words_per_s"],
         "load_average_after": os.getloadavg()}
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
