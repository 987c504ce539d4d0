"""flaxbert's word2vec against gensim 4.x on one corpus, same hyperparameters and epochs,
as JSON: raw corpus words per second of training (--workers threads for gensim; flaxbert's
XLA uses the cores it finds), and the word-similarity (WordSim-353, Spearman) and analogy
(questions-words.txt, 3CosAdd and 3CosMul) scores of both, with the vocabulary's coverage of
the evaluation files and the load average.

    python bench/wordvec_vs_gensim.py [--corpus FILE ...]
        [--model skipgram|cbow] [--dim 100] [--window 5] [--negative 5] [--min-count 5]
        [--epochs 5] [--batch-size 4096] [--shared-negatives 16] [--workers 2]
        [--seeds 1] [--order flaxbert,gensim] [--repeats 3] [--keep-order]
        [--save-vectors DIR]

--corpus takes several files and reads the English text of each: a .tsv's English columns
(wsd_pairs' sentence1 and sentence2, translation's source, sentiment's sentence), a SQuAD
.json's paragraphs and questions, any other file line by line. Texts repeated within a .tsv
or .json are kept once (wsd_pairs holds each example sentence in two pairs; the KJV's
repeated verses stay). The default, MIXED, is the KJV with the modern English of
../shared/data (WordNet example sentences and glosses, dictionary headwords and example
phrases, tweets, WordNet QA paragraphs): the KJV alone holds 48 of WordSim's 353 pairs and
906 of the 19,544 analogies.

The text is lower-cased and cut to letters first, and its lines shuffled (seed 0; both
libraries read the same cleaned file, one text per line). The shuffle matters to gensim, not
to flaxbert: gensim walks the corpus in order with a falling learning rate, so the files at
the end of each pass weigh most (in the files' order, --keep-order, the modern-English files
come last and gensim's skip-gram scores 3.6 WordSim points more than on the shuffled lines,
seed 1); flaxbert deals each epoch's examples out over all its batches.

gensim's test data gives the evaluation files. flaxbert's time includes its jit compile and
its per-epoch example making; gensim's its threads' start; neither includes reading the
corpus and building the vocabulary. Each seed of --seeds trains both libraries once per
repeat; the scores are the mean over seeds and repeats.
"""

import argparse
import csv
import json
import os
import re
import sys
import tempfile
import time

import gensim
import numpy as np
from gensim.models import Word2Vec
from gensim.test.utils import datapath

from flaxbert import output_dir
from flaxbert.errors import FlaxbertError
from flaxbert.wordvec import evaluate, formats
from flaxbert.wordvec.config import WordvecConfig
from flaxbert.wordvec.train import train


# The checkout's ../shared/data (see its README).
DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                    "shared", "data")
MIXED = [f"{DATA}/corpus/kjv.txt"] + [f"{DATA}/{name}/{split}" for name, splits in (
    ("wsd_pairs", ("train.tsv", "dev.tsv")), ("sentiment", ("train.tsv", "dev.tsv")),
    ("translation", ("train.tsv", "dev.tsv", "examples_train.tsv", "examples_dev.tsv")),
    ("qa", ("train.json", "dev.json"))) for split in splits]
ENGLISH_COLUMNS = ("sentence", "sentence1", "sentence2", "source")


def english_texts(path: str):
  """The English texts of one file of the corpus (see the module's docstring)."""
  if path.endswith(".json"):
    with open(path, encoding="utf-8") as f:
      for article in json.load(f)["data"]:
        for paragraph in article["paragraphs"]:
          yield paragraph["context"]
          yield from (qa["question"] for qa in paragraph["qas"])
  elif path.endswith(".tsv"):
    with open(path, encoding="utf-8") as f:
      rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
      columns = [c for c in rows.fieldnames if c in ENGLISH_COLUMNS]
      for row in rows:
        yield from (row[c] for c in columns)
  else:
    with open(path, encoding="utf-8") as f:
      yield from f


def clean_corpus(paths: list[str], out: str, keep_order: bool = False) -> dict:
  """Writes the corpus, lower-cased letters, one text per line, the lines shuffled (seed 0)
  unless keep_order; returns words per file."""
  words, lines = {}, []
  for path in paths:
    seen, words[path] = set(), 0
    structured = path.endswith((".tsv", ".json"))
    for text in english_texts(path):
      tokens = re.findall(r"[a-z]+", text.lower())
      line = " ".join(tokens)
      if tokens and not (structured and line in seen):
        seen.add(line)
        lines.append(line + "\n")
        words[path] += len(tokens)
  if not keep_order:
    lines = [lines[i] for i in np.random.default_rng(0).permutation(len(lines))]
  with open(out, "w", encoding="utf-8") as g:
    g.writelines(lines)
  return words


def scores(vectors: formats.Vectors) -> dict:
  sim = evaluate.similarity(vectors, datapath("wordsim353.tsv"))
  ana = evaluate.analogies(vectors, datapath("questions-words.txt"))
  return {"wordsim353_spearman": sim["spearman"], "wordsim353_oov_pairs": sim["oov_pairs"],
          "analogy_3cosadd": ana["3cosadd"], "analogy_3cosmul": ana["3cosmul"],
          "analogy_seen": ana["seen"], "analogy_questions": ana["questions"]}


def run_flaxbert(args, corpus, tmp, seed):
  cfg = WordvecConfig(corpus=(corpus,), workdir=tmp,
                      model=args.model, dim=args.dim, window=args.window,
                      negative=args.negative, min_count=args.min_count, epochs=args.epochs,
                      batch_size=args.batch_size, shared_negatives=args.shared_negatives,
                      seed=seed, progress=False)
  summary = train(cfg)
  vectors = formats.read_vectors(summary["vectors"])
  return {"seconds": summary["seconds"], "vocabulary": summary["vocabulary"],
          **scores(vectors)}, vectors


def run_gensim(args, corpus, tmp, seed):
  sentences = [line.split() for line in open(corpus, encoding="utf-8")]
  model = Word2Vec(vector_size=args.dim, window=args.window, negative=args.negative,
                   min_count=args.min_count, sg=int(args.model == "skipgram"), hs=0,
                   workers=args.workers, seed=seed)
  model.build_vocab(sentences)
  start = time.perf_counter()
  model.train(sentences, total_examples=model.corpus_count, epochs=args.epochs)
  seconds = time.perf_counter() - start
  words = list(model.wv.index_to_key)
  vectors = formats.Vectors(words, np.asarray(model.wv.vectors, np.float32))
  return {"seconds": seconds, "vocabulary": len(words), **scores(vectors)}, vectors


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
  p.add_argument("--corpus", nargs="+", default=MIXED, metavar="FILE")
  p.add_argument("--model", default="skipgram", choices=("skipgram", "cbow"))
  p.add_argument("--dim", type=int, default=100)
  p.add_argument("--window", type=int, default=5)
  p.add_argument("--negative", type=int, default=5)
  p.add_argument("--min-count", type=int, default=5)
  p.add_argument("--epochs", type=int, default=5)
  p.add_argument("--batch-size", type=int, default=4096)
  p.add_argument("--shared-negatives", type=int, default=16)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--seeds", type=int, nargs="+", default=[1])
  p.add_argument("--order", default="flaxbert,gensim")
  p.add_argument("--repeats", type=int, default=3, help="runs of each, interleaved")
  p.add_argument("--keep-order", action="store_true", help="the corpus's lines in the files' "
                 "order, not shuffled (see the module's docstring)")
  p.add_argument("--save-vectors", metavar="DIR", help="a new directory for the last run's "
                 "vectors of each library (word2vec text: DIR/flaxbert.txt, DIR/gensim.txt)")
  args = p.parse_args()
  if args.save_vectors:
    output_dir.check_new(args.save_vectors, "--save-vectors")
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, "corpus.txt")
    file_words = clean_corpus(args.corpus, corpus, args.keep_order)
    raw_words = sum(file_words.values())
    runs = {name: [] for name in args.order.split(",")}
    last = {}
    for repeat in range(args.repeats):
      for seed in args.seeds:
        for name in runs:
          workdir = os.path.join(tmp, f"{name}-{repeat}-{seed}")
          result, last[name] = {"flaxbert": run_flaxbert, "gensim": run_gensim}[name](
              args, corpus, workdir, seed)
          result["words_per_s"] = raw_words * args.epochs / result["seconds"]
          runs[name].append(result)
  if args.save_vectors:
    with output_dir.new_directory(args.save_vectors, "--save-vectors") as out:
      for name, vectors in last.items():
        formats.write_word2vec_text(os.path.join(out, f"{name}.txt"), vectors.words,
                                    vectors.matrix)
  results = {name: summarise(r) for name, r in runs.items()}
  out = {"corpus_words": file_words, "raw_words": raw_words, "settings": vars(args),
         "gensim_version": gensim.__version__, "load_average_before": load_before, **results,
         "words_per_s_ratio_flaxbert_over_gensim":
             results["flaxbert"]["words_per_s"] / results["gensim"]["words_per_s"],
         "load_average_after": os.getloadavg()}
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  try:
    main()
  except FlaxbertError as e:
    sys.exit(f"wordvec_vs_gensim: error: {e}")
