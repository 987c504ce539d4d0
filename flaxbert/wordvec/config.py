"""The settings of a word-vector run (`flaxbert wordvec train`), one field per flag (see
flaxbert/recipes/configs.py for the metadata; commands/flags.py makes the flags). The
defaults are word2vec's and gensim's, except the batching, which is ours."""

from __future__ import annotations

import dataclasses

from flaxbert.recipes.configs import setting


@dataclasses.dataclass(frozen=True)
class WordvecConfig:
  corpus: tuple[str, ...] = setting(metavar="FILE", help="UTF-8 text, one sentence per line, "
                                    "words split at whitespace (no case folding)")
  workdir: str = setting(flag="--out", metavar="DIR", help="run directory: checkpoint, "
                         "metrics.jsonl, vectors.txt (word2vec text format); re-running the "
                         "same command resumes the run")
  model: str = setting("skipgram", choices=("skipgram", "cbow"),
                       help="skip-gram (a word predicts each neighbour) or CBOW (the mean "
                       "of the window predicts the word)")
  dim: int = setting(100, help="vector dimensions")
  window: int = setting(5, help="largest window each side; each word draws its own from "
                        "1..window (near neighbours weigh more)")
  negative: int = setting(5, help="negative samples per example, from unigram^0.75")
  min_count: int = setting(5, help="words seen fewer times are left out")
  epochs: int = setting(5, help="passes over the corpus")
  sample: float = setting(1e-3, help="frequent-word subsampling threshold (0: off)")
  alpha: float = setting(0.025, help="initial learning rate, falling linearly to --min-alpha")
  min_alpha: float = setting(0.0001, help="final learning rate")
  batch_size: int = setting(4096, help="examples per update, summed into the tables at once")
  shared_negatives: int = setting(16, help="consecutive examples of a batch that "
                                  "draw one set of negatives (each still sees --negative "
                                  "draws; 1: word2vec's sampling, slower on CPUs)")
  subword: bool = setting(False, help="fastText-style: a word's vector is the mean of its "
                          "own and its character n-grams' rows, so unseen words get vectors")
  buckets: int = setting(200_000, help="hash buckets of the n-grams (with --subword)")
  min_n: int = setting(3, help="shortest character n-gram (with --subword)")
  max_n: int = setting(6, help="longest character n-gram (with --subword)")
  seed: int = setting(1, help="seed of initialisation, subsampling, windows, order, negatives")
  chunk: int = setting(64, identity=False, help="batches per compiled call (lax.scan)")
  checkpoint_every: int = setting(50, identity=False, help="chunks between checkpoints "
                                  "(and one at each epoch's end)")
  log_every: int = setting(10, identity=False, help="chunks between metrics.jsonl lines")
  progress: bool = setting(True, flag="--quiet", identity=False, help="no progress bars")
