"""End to end through the CLI: span-corruption pretraining, fine-tuning from its bundle on
real translation pairs, BLEU/chrF written by training equal to sacrebleu's on the written
predictions, `flaxbert predict --task seq2seq`, and bad input as a one-line error."""

import json
import os

import jax
import numpy as np
import sacrebleu

from conftest import SHARED_DATA, call_cli


def _head(src, dst, lines):
  with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
    for _ in range(lines):
      out.write(f.readline())


def test_pretrain_finetune_predict(tmp_path):
  corpus = tmp_path / "corpus.txt"
  _head(os.path.join(SHARED_DATA, "corpus", "kjv.txt"), corpus, 1500)
  held_out = tmp_path / "held_out.txt"
  with open(os.path.join(SHARED_DATA, "corpus", "kjv.txt"), encoding="utf-8") as f:
    held_out.write_text("".join(f.readlines()[1500:1700]), encoding="utf-8")
  train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
  _head(os.path.join(SHARED_DATA, "translation", "examples_train.tsv"), train, 400)
  _head(os.path.join(SHARED_DATA, "translation", "examples_dev.tsv"), dev, 41)

  pre = tmp_path / "pre"
  rc, out, err = call_cli("pretrain", "--model", "encdec", "--workdir", pre, "--corpus", corpus,
                         "--eval-corpus", held_out,
                         "--vocab-size", 400, "--steps", 6, "--batch-size", 8, "--seq-len", 32,
                         "--eval-every", 6, "--eval-batches", 1, "--quiet")
  assert rc == 0, err[-2000:]
  meta = json.load(open(pre / "bundle" / "config.json"))
  assert meta["model"] == "encdec" and meta["config"]["vocab_size"] % 128 == 0
  last = [json.loads(l) for l in open(pre / "metrics.jsonl")][-1]
  assert last["step"] == 6 and "eval_loss" in last

  run = tmp_path / "ft"
  rc, out, err = call_cli("finetune", "seq2seq", "--train", train, "--dev", dev, "--workdir", run,
                         "--init", pre / "bundle", "--steps", 8, "--batch-size", 8,
                         "--eval-every", 4, "--beam", 2, "--max-source-length", 24,
                         "--max-target-length", 24, "--quiet")
  assert rc == 0, err[-2000:]
  references = []
  with open(dev, encoding="utf-8") as f:
    next(f)   # header
    references = [line.rstrip("\n").split("\t")[1] for line in f]
  metrics = [json.loads(l) for l in open(run / "metrics.jsonl")]
  final = metrics[-1]
  assert final["step"] == 8
  for name in ("greedy", "beam2"):
    hyps = open(run / "predictions" / f"dev_{name}_step8.txt", encoding="utf-8").read() \
        .splitlines()
    assert len(hyps) == len(references) == 40
    assert final[f"dev_bleu_{name}"] == sacrebleu.corpus_bleu(hyps, [references]).score
    assert final[f"dev_chrf_{name}"] == sacrebleu.corpus_chrf(hyps, [references]).score
  assert os.path.isfile(run / "best" / "config.json")
  # The run's last checkpoint exported as a bundle equals the bundle the run wrote.
  rc, out, err = call_cli("export", run, "--out", tmp_path / "exported")
  assert rc == 0, err[-2000:]
  from flaxbert import bundle as bundle_lib
  exported = bundle_lib.load_encdec_bundle(tmp_path / "exported")
  written = bundle_lib.load_encdec_bundle(run / "bundle")
  assert exported.config == written.config
  for a, b in zip(jax.tree.leaves(exported.params), jax.tree.leaves(written.params)):
    np.testing.assert_array_equal(a, b)

  sources = tmp_path / "sources.txt"
  sources.write_text("food chain\nwalk-in clinics\n\nburner gas\n", encoding="utf-8")
  out_file = tmp_path / "out.txt"
  rc, out, err = call_cli("predict", run / "bundle", "--task", "seq2seq", "--input", sources,
                         "--output", out_file, "--beam", 2, "--max-output-length", 16)
  assert rc == 0, err[-2000:]
  assert len(out_file.read_text(encoding="utf-8").splitlines()) == 4

  rc, out, err = call_cli("predict", run / "bundle", "--task", "seq2seq", "--input",
                         tmp_path / "missing.txt", "--output", out_file)
  assert rc == 2 and "missing.txt: no such file" in err and "Traceback" not in err
  rc, out, err = call_cli("finetune", "seq2seq", "--train", tmp_path / "nope.tsv", "--dev", dev,
                         "--workdir", tmp_path / "bad", "--quiet")
  assert rc == 2 and "nope.tsv" in err and "Traceback" not in err
