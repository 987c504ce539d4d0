"""The `flaxbert` command end to end: convert, embed, tokenizer train, and bad input."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxbert
from flaxbert import cli

from conftest import run_cli


@pytest.fixture(scope="module")
def minilm_bundle(minilm_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("cli") / "minilm"
  rc, stdout, stderr = run_cli("convert", "--from-hf", minilm_dir, "--out", out)
  assert rc == 0, stderr
  assert "wrote bundle" in stdout and os.path.isdir(out / "params")
  return str(out)


def test_embed_writes_features_in_input_order(minilm_bundle, minilm_dir, tmp_path):
  texts = ["A single sentence.", "First of a pair\tand its second half, longer.", "",
           "Another line, the last one, a bit longer than the rest of them here."]
  (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
  rc, stdout, stderr = run_cli("embed", minilm_bundle, "--input", tmp_path / "in.txt",
                               "--output", tmp_path / "out.npz", "--batch-size", "3",
                               "--max-length", "20")
  assert rc == 0, stderr
  out = np.load(tmp_path / "out.npz")
  n, s = out["input_ids"].shape
  assert n == 4 and s <= 20
  assert out["hidden"].shape == (4, s, 384) and out["pooled"].shape == (4, 384)
  assert out["hidden"].dtype == np.float32 and out["mask"].shape == (4, s)
  assert np.all(out["hidden"][out["mask"] == 0] == 0)
  # Row by row, the features equal the model run on that row alone.
  model, params, tokenizer = flaxbert.load(minilm_dir)
  apply = jax.jit(model.apply)
  for row, line in enumerate(texts):
    a, _, b = line.partition("\t")
    ids, segments = tokenizer.build_inputs(tokenizer.encode(a),
                                           tokenizer.encode(b) if b else None, 20)
    assert out["input_ids"][row, :len(ids)].tolist() == ids
    assert out["mask"][row].sum() == len(ids)
    single = apply({"params": params}, jnp.asarray([ids]), jnp.asarray([segments]))
    np.testing.assert_allclose(out["hidden"][row, :len(ids)], single["hidden"][0], atol=1e-4)
    np.testing.assert_allclose(out["pooled"][row], single["pooled"][0], atol=1e-4)


def test_convert_back_to_hf_and_refuse_to_overwrite(minilm_bundle, tmp_path):
  rc, _, stderr = run_cli("convert", "--to-hf", minilm_bundle, "--out", tmp_path / "hf")
  assert rc == 0, stderr
  assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors",
                                                 "tokenizer.json", "tokenizer_config.json",
                                                 "vocab.txt"]
  before = (tmp_path / "hf" / "model.safetensors").stat().st_mtime_ns
  rc, _, stderr = run_cli("convert", "--to-hf", minilm_bundle, "--out", tmp_path / "hf")
  assert rc == 2 and "already exists" in stderr and "Traceback" not in stderr
  assert (tmp_path / "hf" / "model.safetensors").stat().st_mtime_ns == before


def test_tokenizer_train_command(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("".join(f"line {i} of a small corpus about tokenizers.\n\n"
                            for i in range(200)), encoding="utf-8")
  rc, stdout, stderr = run_cli("tokenizer", "train", "--input", corpus, "--vocab-size", "400",
                               "--output", tmp_path / "tok")
  assert rc == 0, stderr
  from flaxbert.data.tokenizer import load_tokenizer
  tok = load_tokenizer(str(tmp_path / "tok"))
  assert tok.vocab_size == 400 and tok.decode(tok.encode("line 7 of a corpus")) == \
      "line 7 of a corpus"


def _bad_hf_dir(source, tmp_path, edit):
  import shutil
  target = tmp_path / "bad_hf"
  shutil.copytree(source, target)
  path = target / "config.json"
  path.write_text(edit(path.read_text()))
  return target


BAD_INPUTS = {
    "missing bundle": (lambda d, t: ["embed", t / "nope", "--input", t / "in.txt", "--output",
                                     t / "o.npz"], "no such bundle"),
    "missing input": (lambda d, t: ["embed", d, "--input", t / "nope.txt", "--output",
                                    t / "o.npz"], "no such input file"),
    "empty input": (lambda d, t: ["embed", d, "--input", t / "empty.txt", "--output",
                                  t / "o.npz"], "empty"),
    "not utf-8": (lambda d, t: ["embed", d, "--input", t / "latin1.txt", "--output",
                                t / "o.npz"], "latin1.txt:2: not UTF-8"),
    "three columns": (lambda d, t: ["embed", d, "--input", t / "three.txt", "--output",
                                    t / "o.npz"], "three.txt:1: 3 tab-separated"),
    "max length": (lambda d, t: ["embed", d, "--input", t / "in.txt", "--output", t / "o.npz",
                                 "--max-length", "9999"], "--max-length"),
    "shapes disagree": (lambda d, t: ["convert", "--from-hf", _bad_hf_dir(
        d, t, lambda s: s.replace('"intermediate_size": 1536', '"intermediate_size": 1000')),
        "--out", t / "b"], "model.safetensors: tensor encoder.layer.0.intermediate.dense.weight "
        "has shape (1536, 384) but config.json implies (1000, 384)"),
    "heads do not divide": (lambda d, t: ["convert", "--from-hf", _bad_hf_dir(
        d, t, lambda s: s.replace('"num_attention_heads": 12', '"num_attention_heads": 7')),
        "--out", t / "b"], "not divisible by num_heads 7"),
    "malformed config": (lambda d, t: ["convert", "--from-hf", _bad_hf_dir(
        d, t, lambda s: s[:40]), "--out", t / "b"], "config.json:"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_nonzero(case, minilm_dir, tmp_path, capsys):
  (tmp_path / "in.txt").write_text("hello\n")
  (tmp_path / "empty.txt").write_text("")
  (tmp_path / "latin1.txt").write_bytes("fine\ncaf\u00e9\n".encode("latin-1"))
  (tmp_path / "three.txt").write_text("a\tb\tc\n")
  make_args, message = BAD_INPUTS[case]
  rc = cli.main([str(a) for a in make_args(minilm_dir, tmp_path)])
  err = capsys.readouterr().err.strip()
  assert rc == 2
  assert err.startswith("flaxbert: error: ") and message in err, err
  assert len(err.splitlines()) == 1 and "Traceback" not in err
  assert not (tmp_path / "o.npz").exists() and not (tmp_path / "b").exists()


def test_bad_input_exit_code_from_the_console_entry_point(tmp_path):
  rc, stdout, stderr = run_cli("embed", tmp_path / "missing", "--input", tmp_path / "x",
                               "--output", tmp_path / "o.npz")
  assert rc == 2 and stderr.strip() == f"flaxbert: error: {tmp_path / 'missing'}: no such " \
      "bundle or checkpoint directory"


def test_python_dash_m_pretrain_is_the_same_launcher():
  import subprocess
  import sys
  from conftest import REPO
  proc = subprocess.run([sys.executable, "-m", "pretrain", "--help"], capture_output=True,
                        text=True, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("usage: flaxbert pretrain") and "--mesh" in proc.stdout
