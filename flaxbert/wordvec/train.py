"""`flaxbert wordvec train`: a resumable word-vector run in the run skeleton.

    with open_run(cfg, kind="wordvec") as run:   # lock, identity (run_config.json)
      epochs of chunks: jitted train_chunk over `chunk` batches of `batch_size` examples
      WORKDIR/checkpoints/N/state.npz  tables + position after N batches, the newest kept;
                              every checkpoint_every chunks and at each epoch's end
      WORKDIR/metrics.jsonl, tensorboard/   loss, learning rate, words/s per chunk
      WORKDIR/vectors.txt     word2vec text format, when training ends
      WORKDIR/subword.npz     with --subword: the n-gram bucket rows, for unseen words

The learning rate falls linearly from alpha to min_alpha over all epochs, per batch. Examples,
negatives and initialisation come from the seed alone, so a resumed run ends with the vectors
of an uninterrupted one.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert.progress import progress_bar
from flaxbert.training.metrics import MetricsWriter
from flaxbert.training.run import RUN_CONFIG, open_run
from flaxbert.wordvec import examples, formats, subword, vocab
from flaxbert.wordvec.config import WordvecConfig
from flaxbert.wordvec.step import train_chunk

log = logging.getLogger("flaxbert")

CHECKPOINTS = "checkpoints"   # checkpoints/<batches trained>/state.npz, the newest kept
STATE = "state.npz"
VECTORS = "vectors.txt"
SUBWORDS = "subword.npz"


def check_config(cfg: WordvecConfig, mesh=None) -> None:
  if cfg.model not in ("skipgram", "cbow"):
    raise FlaxbertError(f"--model {cfg.model}: use skipgram or cbow")
  for name in ("dim", "window", "negative", "min_count", "epochs", "batch_size", "shared_negatives", "chunk",
               "checkpoint_every", "log_every"):
    if getattr(cfg, name) < 1:
      raise FlaxbertError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be >= 1")
  if cfg.batch_size % cfg.shared_negatives:
    raise FlaxbertError(f"--batch-size {cfg.batch_size}: must be a multiple of "
                        f"--shared-negatives {cfg.shared_negatives}")
  if not 0 < cfg.min_alpha <= cfg.alpha:
    raise FlaxbertError(f"--alpha {cfg.alpha} / --min-alpha {cfg.min_alpha}: need "
                        "0 < min-alpha <= alpha")
  if cfg.subword and (cfg.buckets < 1 or not 1 <= cfg.min_n <= cfg.max_n):
    raise FlaxbertError(f"--buckets {cfg.buckets}, --min-n {cfg.min_n}, --max-n {cfg.max_n}: "
                        "need buckets >= 1 and 1 <= min-n <= max-n")
  existing = os.path.isdir(cfg.workdir) and os.listdir(cfg.workdir)
  if existing and not os.path.isfile(os.path.join(cfg.workdir, RUN_CONFIG)):
    raise FlaxbertError(f"{cfg.workdir}: exists and is not a flaxbert run directory; use a new "
                        "--out (nothing was changed)")


def _save_atomically(path: str, write) -> None:
  tmp = path + ".tmp"
  write(tmp)
  os.replace(tmp, path)


def _save_checkpoint(directory, tables, epoch: int, chunk: int, batches: int) -> None:
  """checkpoints/<batches>/state.npz, made under another name and renamed into place; then
  the older ones go (a kill at any point leaves a whole newest checkpoint)."""
  w_in, w_out = jax.device_get(tables)
  os.makedirs(directory, exist_ok=True)
  final = os.path.join(directory, str(batches))
  if os.path.isdir(final):
    return
  tmp = os.path.join(directory, f".{batches}.partial")
  shutil.rmtree(tmp, ignore_errors=True)   # ours: a partial checkpoint of a killed run
  os.makedirs(tmp)
  with open(os.path.join(tmp, STATE), "wb") as f:
    np.savez(f, w_in=w_in, w_out=w_out, epoch=epoch, chunk=chunk, batches=batches)
  os.replace(tmp, final)
  for name in os.listdir(directory):
    if name.isdigit() and int(name) < batches:
      shutil.rmtree(os.path.join(directory, name))


def _latest_checkpoint(directory) -> str | None:
  steps = [int(n) for n in os.listdir(directory) if n.isdigit()] \
      if os.path.isdir(directory) else []
  return os.path.join(directory, str(max(steps)), STATE) if steps else None


def _learning_rates(cfg, epoch: int, first: int, count: int, per_epoch: int) -> np.ndarray:
  progress = (epoch + (first + np.arange(count)) / per_epoch) / cfg.epochs
  return np.maximum(cfg.alpha * (1 - progress), cfg.min_alpha).astype(np.float32)


def _epoch_batches(cfg, corpus, keep, epoch: int):
  """(inputs [n,C,B,k], outputs [n,C,B], valid [n,C,B]): the epoch's examples in n chunks of
  C batches, padded with invalid examples. The examples are dealt out like cards: of N
  batches, batch j holds examples j, j + N, j + 2N, ..., windows from all over the corpus.
  (It replaced a random permutation, which took 3/4 of the example making, its gathers
  missing the cache: skip-gram on the bench's 2.8M words ran 1.15-1.2x faster on one core, and
  scored no worse, WordSim 39.2 against 37.9 and analogies 6.9 / 6.2 against 6.8 / 6.0,
  seeds 1-3.)"""
  inputs, outputs = examples.epoch_examples(cfg.model, corpus.tokens, corpus.sentences, keep,
                                            cfg.window, cfg.seed, epoch)
  per_chunk = cfg.batch_size * cfg.chunk
  n_chunks = -(-len(outputs) // per_chunk)
  pad = n_chunks * per_chunk - len(outputs)
  valid = np.concatenate([np.ones(len(outputs), bool), np.zeros(pad, bool)])
  inputs = np.concatenate([inputs, np.full((pad, inputs.shape[1]), -1, np.int32)])
  outputs = np.concatenate([outputs, np.zeros(pad, np.int32)])
  shape = (n_chunks, cfg.chunk, cfg.batch_size)

  def deal(x):
    dealt = x.reshape(cfg.batch_size, n_chunks * cfg.chunk, *x.shape[1:]).swapaxes(0, 1)
    return np.ascontiguousarray(dealt).reshape(*shape, *x.shape[1:])

  return deal(inputs), deal(outputs), deal(valid)


def train(cfg: WordvecConfig, stop_after_chunks: int | None = None) -> dict:
  """Trains (or resumes) the run in cfg.workdir; returns a summary. stop_after_chunks ends
  the call early, as an interruption would (after a checkpoint)."""
  cfg = dataclasses.replace(cfg, workdir=os.path.abspath(cfg.workdir))
  with open_run(cfg, kind="wordvec", check=check_config, option="--out") as run, \
      concurrent.futures.ThreadPoolExecutor(1) as prefetch:
    corpus = vocab.read_corpus(list(cfg.corpus), cfg.min_count)
    n_words = len(corpus.words)
    buckets = cfg.buckets if cfg.subword else 0
    word_rows, word_mask = subword.input_rows(corpus.words, buckets, cfg.min_n, cfg.max_n)
    keep = vocab.keep_probabilities(corpus.counts, cfg.sample)
    run.record(vocabulary=n_words, raw_words=int(corpus.raw_words))
    ckpt = run.path(CHECKPOINTS)
    key = jax.random.key(cfg.seed)
    latest = _latest_checkpoint(ckpt)
    if latest is not None:
      with np.load(latest) as saved:
        tables = (jnp.asarray(saved["w_in"]), jnp.asarray(saved["w_out"]))
        epoch, chunk, batches = int(saved["epoch"]), int(saved["chunk"]), int(saved["batches"])
      log.info("flaxbert: resuming at epoch %d, chunk %d", epoch + 1, chunk)
    else:
      # gensim 4's scale, +-1/dim (word2vec's is +-0.5/dim): over seeds 1-3 on the bench's
      # corpus it gave +0.4 WordSim and +0.3 analogy points, closer to gensim's scores.
      w_in = jax.random.uniform(jax.random.fold_in(key, 0), (n_words + buckets, cfg.dim),
                                minval=-1.0 / cfg.dim, maxval=1.0 / cfg.dim)
      tables = (w_in, jnp.zeros((n_words, cfg.dim), jnp.float32))
      epoch, chunk, batches = 0, 0, 0
    statics = dict(word_rows=jnp.asarray(word_rows), word_mask=jnp.asarray(word_mask),
                   negatives_table=jnp.asarray(vocab.negative_table(corpus.counts)),
                   seed_key=jax.random.fold_in(key, 1), negative=cfg.negative,
                   group=cfg.shared_negatives)
    writer = MetricsWriter(run.workdir, batches, enabled=True)
    start, trained_words, calls, sums = time.perf_counter(), 0.0, 0, None
    upcoming = prefetch.submit(_epoch_batches, cfg, corpus, keep, epoch)
    try:
      while epoch < cfg.epochs:
        inputs, outputs, valid = upcoming.result()
        # The next epoch's examples are made on the host while this one trains (the chunks
        # are dispatched asynchronously).
        upcoming = prefetch.submit(_epoch_batches, cfg, corpus, keep, epoch + 1)
        n_chunks = len(outputs)
        bar = progress_bar(n_chunks, f"epoch {epoch + 1}/{cfg.epochs}", unit="chunk",
                           initial=chunk, disable=not cfg.progress)
        while chunk < n_chunks:
          lrs = _learning_rates(cfg, epoch, chunk * cfg.chunk, cfg.chunk, n_chunks * cfg.chunk)
          tables, loss, pairs = train_chunk(tables, inputs[chunk], outputs[chunk], lrs,
                                            valid[chunk], batches, **statics)
          chunk, batches, calls = chunk + 1, batches + cfg.chunk, calls + 1
          trained_words += corpus.raw_words / n_chunks
          # Summed on the device: reading them back each chunk would wait for every chunk.
          sums = (loss, pairs) if sums is None else (sums[0] + loss, sums[1] + pairs)
          if calls % cfg.log_every == 0 or chunk == n_chunks:
            loss, pairs = (float(x) for x in sums)
            sums = None
            writer.write(batches, {"loss": loss / max(pairs, 1.0),
                                   "learning_rate": float(lrs[-1]),
                                   "epoch": epoch + chunk / n_chunks,
                                   "words_per_s": trained_words / (time.perf_counter() - start)})
          bar.update(1)
          at_end = chunk == n_chunks
          stopping = stop_after_chunks is not None and calls >= stop_after_chunks
          if at_end or stopping or calls % cfg.checkpoint_every == 0:
            _save_checkpoint(ckpt, tables, epoch + at_end, 0 if at_end else chunk, batches)
          if stopping:
            bar.close()
            return {"stopped": True, "epoch": epoch + at_end, "chunk": 0 if at_end else chunk}
        bar.close()
        epoch, chunk = epoch + 1, 0
    finally:
      writer.close()
      upcoming.cancel()
    w_in, w_out = jax.device_get(tables)
    elapsed = time.perf_counter() - start
    vectors = (w_in[word_rows] * word_mask[..., None]).sum(1) / word_mask.sum(1, keepdims=True)
    _save_atomically(run.path(VECTORS),
                     lambda tmp: formats.write_word2vec_text(tmp, corpus.words, vectors))
    if buckets:
      _save_atomically(run.path(SUBWORDS), lambda tmp: formats.write_subwords(
          tmp, w_in[n_words:], cfg.min_n, cfg.max_n))
    summary = {"vectors": run.path(VECTORS), "vocabulary": n_words,
               "raw_words": int(corpus.raw_words), "epochs": cfg.epochs,
               "seconds": elapsed, "words_per_s": trained_words / elapsed if calls else None}
    run.record(result=summary)
    return summary
