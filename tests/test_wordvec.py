"""flaxbert/wordvec: formats, evaluation against hand-computed answers, training that learns
and resumes exactly, the CLI (tiny corpora: each training here takes about a second)."""

import json
import os

import jax
import numpy as np
import pytest
from scipy import stats

from conftest import call_cli
from flaxbert.errors import FlaxbertError
from flaxbert.wordvec import evaluate, formats, step, subword, vocab
from flaxbert.wordvec.config import WordvecConfig
from flaxbert.wordvec.train import train

ANIMALS = ["cat", "dog", "horse", "cow", "sheep", "goat", "pig", "duck"]
TOOLS = ["hammer", "saw", "drill", "wrench", "chisel", "pliers", "file", "plane"]


@pytest.fixture(scope="module")
def topic_corpus(tmp_path_factory) -> str:
  """Sentences drawn from one topic each: words of a topic share contexts, across topics
  never."""
  rng = np.random.default_rng(0)
  path = tmp_path_factory.mktemp("wordvec") / "topics.txt"
  with open(path, "w", encoding="utf-8") as f:
    for n in range(1500):
      topic = (ANIMALS, TOOLS)[n % 2]
      f.write(" ".join(rng.choice(topic, 8)) + "\n")
  return str(path)


def _config(corpus, workdir, **more) -> WordvecConfig:
  settings = dict(corpus=(corpus,), workdir=str(workdir), dim=16, window=3, min_count=1,
                  epochs=3, sample=0.0, batch_size=256, chunk=4, progress=False)
  return WordvecConfig(**{**settings, **more})


def _cos(vectors, a, b):
  x, y = vectors.vector(a), vectors.vector(b)
  return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def test_formats_round_trip(tmp_path):
  words = ["the", "café", "x"]
  matrix = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
  for fmt in formats.FORMATS:
    path = str(tmp_path / fmt)
    formats.write(path, formats.Vectors(words, matrix), fmt)
    back = formats.read_vectors(path)
    assert back.words == words, fmt
    exact = fmt == "word2vec-binary"
    np.testing.assert_allclose(back.matrix, matrix, rtol=0 if exact else 1e-5, err_msg=fmt)
  with open(tmp_path / "word2vec-binary", "rb") as f:
    assert f.readline() == b"3 5\n"
  with open(tmp_path / "glove", encoding="utf-8") as f:
    assert f.readline().startswith("the ")


def test_bad_vector_files(tmp_path):
  good = tmp_path / "good.bin"
  formats.write_word2vec_binary(str(good), ["a", "b"], np.ones((2, 4), np.float32))
  cut = tmp_path / "cut.bin"
  cut.write_bytes(good.read_bytes()[:-6])
  with pytest.raises(FlaxbertError, match="ends inside the vector of 'b'"):
    formats.read_vectors(str(cut))
  short = tmp_path / "short.txt"
  short.write_text("3 2\na 1 2\nb 3 4\n")
  with pytest.raises(FlaxbertError, match="holds 2 vectors, its header says 3"):
    formats.read_vectors(str(short))
  ragged = tmp_path / "ragged.txt"
  ragged.write_text("a 1 2\nb 3\n")
  with pytest.raises(FlaxbertError, match=r"ragged.txt:2: 1 numbers after the word, expected 2"):
    formats.read_vectors(str(ragged))


def test_similarity_against_hand_computed_spearman(tmp_path):
  vectors = formats.Vectors(["a", "b", "c", "d"], np.array(
      [[1, 0], [1, 1], [0, 1], [-1, 0.2]], np.float32))
  tsv = tmp_path / "sim.tsv"
  tsv.write_text("# comment\nA\tb\t9\na\tc\t5\na\td\t1\nb\tc\t6\na\tzzz\t3\n")
  result = evaluate.similarity(vectors, str(tsv))
  # cosines: a-b .707, a-c 0, a-d -.98, b-c .707 (tie with a-b): ranks 3.5, 2, 1, 3.5
  human, model = [9, 5, 1, 6], [3.5, 2, 1, 3.5]
  assert result["spearman"] == pytest.approx(stats.pearsonr(
      stats.rankdata(human), model).statistic)
  assert (result["pairs"], result["oov_pairs"]) == (5, 1)


def test_analogies_3cosadd_and_3cosmul(tmp_path):
  # king - man + woman lands on queen; the question words themselves are never answers.
  words = ["man", "woman", "king", "queen", "apple"]
  matrix = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 0, 1]], np.float32)
  vectors = formats.Vectors(words, matrix)
  questions = tmp_path / "q.txt"
  questions.write_text(": royal\nman king woman queen\nman woman king apple\n"
                       ": other\nman woman pear queen\n")
  result = evaluate.analogies(vectors, str(questions))
  royal, other = result["sections"]
  assert royal == {"section": "royal", "questions": 2, "oov_questions": 0, "seen": 2,
                   "3cosadd": 0.5, "3cosmul": 0.5}
  assert other["seen"] == 0 and other["oov_questions"] == 1 and other["3cosadd"] is None
  assert (result["3cosadd"], result["seen"], result["oov_questions"]) == (0.5, 2, 1)
  assert evaluate.neighbors(vectors, "king - man + woman", 1)[0][0] == "queen"


def test_subword_ngrams_and_hash():
  assert subword.char_ngrams("where", 3, 3) == ["<wh", "whe", "her", "ere", "re>"]
  assert "<a>" in subword.char_ngrams("a")
  assert subword.fnv1a("a") == 0xE40C292C        # the FNV-1a 32-bit test vector
  assert subword.fnv1a("") == 2166136261


def test_sampling_tables():
  counts = np.array([1000, 100, 10, 1])
  keep = vocab.keep_probabilities(counts, 1e-3)
  t = 1e-3 * counts.sum()
  assert keep[0] == pytest.approx((np.sqrt(1000 / t) + 1) * t / 1000)
  assert keep[3] == 1.0
  table = vocab.negative_table(counts, size=100_000)
  share = np.bincount(table, minlength=4) / len(table)
  np.testing.assert_allclose(share, counts ** 0.75 / (counts ** 0.75).sum(), atol=1e-4)


def _word2vec_batches(tables, inputs, outputs, lrs, valid, rows_of, mask_of, negs):
  """word2vec's negative-sampling update written plainly in float64, each batch's updates
  summed from the tables as they were before it (the step's batching)."""
  w_in, w_out = (t.astype(np.float64) for t in tables)
  for c in range(len(outputs)):
    d_in_tab, d_out_tab = np.zeros_like(w_in), np.zeros_like(w_out)
    group = len(outputs[c]) // len(negs[c])
    for b, (words, out) in enumerate(zip(inputs[c], outputs[c])):
      if not valid[c, b]:
        continue
      rows = [r for w in words if w >= 0 for r, m in zip(rows_of[w], mask_of[w]) if m]
      h = w_in[rows].mean(0)
      g_pos = lrs[c] * (1 - 1 / (1 + np.exp(-h @ w_out[out])))
      d_in, d_out_tab[out] = g_pos * w_out[out], d_out_tab[out] + g_pos * h
      for neg in negs[c][b // group]:
        if neg != out:
          g = -lrs[c] / (1 + np.exp(-h @ w_out[neg]))
          d_in, d_out_tab[neg] = d_in + g * w_out[neg], d_out_tab[neg] + g * h
      for r in rows:
        d_in_tab[r] += d_in
    w_in, w_out = w_in + d_in_tab, w_out + d_out_tab
  return w_in, w_out


@pytest.mark.parametrize("case", ["skipgram", "cbow", "subword", "cbow-subword-flat"])
def test_step_is_word2vecs_update(case, monkeypatch):
  """The jitted step's fast forms (one direct row, a column at a time, the broadcast scatter
  past MAX_UNROLLED) against the update written out by hand, negatives drawn as it draws."""
  rng = np.random.default_rng(3)
  words, dim, size, group, negative, chunk = [f"w{i}x" for i in range(10)], 6, 16, 4, 3, 2
  buckets = 0 if case in ("skipgram", "cbow") else 11
  rows_of, mask_of = subword.input_rows(words, buckets, 2, 3)
  width = 1 if case in ("skipgram", "subword") else 4
  inputs = rng.integers(0, len(words), (chunk, size, width)).astype(np.int32)
  if width > 1:
    inputs[rng.random(inputs.shape) < 0.3] = -1
  outputs = rng.integers(0, len(words), (chunk, size)).astype(np.int32)
  valid = np.ones((chunk, size), bool)
  valid[-1, -3:] = False
  inputs[-1, -3:], outputs[-1, -3:] = -1, 0     # padding, as train.py pads the last chunk
  lrs = np.array([0.5, 0.3], np.float32)        # large, so that a wrong update shows
  tables = (rng.normal(size=(len(words) + buckets, dim)).astype(np.float32),
            rng.normal(size=(len(words), dim)).astype(np.float32))
  table = vocab.negative_table(np.arange(len(words), 0, -1), size=1000)
  seed_key = jax.random.key(5)
  if case == "cbow-subword-flat":
    monkeypatch.setattr(step, "MAX_UNROLLED", 0)
    step.train_chunk.clear_cache()
  (w_in, w_out), _, count = step.train_chunk(
      tuple(np.copy(t) for t in tables), inputs, outputs, lrs, valid, 7, word_rows=rows_of,
      word_mask=mask_of, negatives_table=table, seed_key=seed_key, negative=negative,
      group=group)
  step.train_chunk.clear_cache()
  negs = [table[np.asarray(jax.random.randint(jax.random.fold_in(seed_key, 7 + c),
                                              (size // group, negative), 0, len(table)))]
          for c in range(chunk)]
  want_in, want_out = _word2vec_batches(tables, inputs, outputs, lrs, valid, rows_of, mask_of,
                                        negs)
  assert int(count) == valid.sum()
  assert np.abs(want_in - tables[0]).max() > 0.1          # the update is not a no-op
  np.testing.assert_allclose(np.asarray(w_in), want_in, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(w_out), want_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model,shared", [("skipgram", 16), ("cbow", 1)])
def test_training_puts_words_of_a_topic_together(topic_corpus, tmp_path, model, shared):
  summary = train(_config(topic_corpus, tmp_path / model, model=model,
                          shared_negatives=shared))
  vectors = formats.read_vectors(summary["vectors"])
  assert sorted(vectors.words) == sorted(ANIMALS + TOOLS)
  within = np.mean([_cos(vectors, a, b) for a in ANIMALS[:4] for b in ANIMALS[4:]])
  across = np.mean([_cos(vectors, a, b) for a in ANIMALS for b in TOOLS])
  assert within > across + 0.3, (within, across)
  lines = open(tmp_path / model / "metrics.jsonl").read().splitlines()
  losses = [json.loads(line)["loss"] for line in lines]
  assert losses[-1] < losses[0]


def test_resumed_run_ends_with_the_uninterrupted_runs_vectors(topic_corpus, tmp_path):
  whole = train(_config(topic_corpus, tmp_path / "whole", shared_negatives=4))
  stopped = train(_config(topic_corpus, tmp_path / "parts", shared_negatives=4),
                  stop_after_chunks=3)
  assert stopped["stopped"] and not os.path.exists(tmp_path / "parts" / "vectors.txt")
  resumed = train(_config(topic_corpus, tmp_path / "parts", shared_negatives=4))
  a, b = formats.read_vectors(whole["vectors"]), formats.read_vectors(resumed["vectors"])
  assert a.words == b.words
  np.testing.assert_array_equal(a.matrix, b.matrix)


def test_subword_vectors_for_unseen_words(topic_corpus, tmp_path):
  summary = train(_config(topic_corpus, tmp_path / "sub", subword=True, buckets=5000))
  vectors = formats.read_vectors(summary["vectors"])
  assert "hammers" not in vectors.index and vectors.ngrams is not None
  assert _cos(vectors, "hammers", "hammer") > 0.5
  assert np.mean([_cos(vectors, "hammers", t) for t in TOOLS]) > \
      np.mean([_cos(vectors, "hammers", a) for a in ANIMALS])


def test_cli_train_query_and_faults(topic_corpus, tmp_path):
  out = tmp_path / "run"
  flags = ["--corpus", topic_corpus, "--out", out, "--dim", "8", "--min-count", "1",
           "--epochs", "1", "--sample", "0", "--batch-size", "256", "--chunk", "2", "--quiet"]
  rc, stdout, _ = call_cli("wordvec", "train", *flags)
  assert rc == 0 and "16 words x 8" in stdout
  rc, stdout, _ = call_cli("wordvec", "neighbors", out / "vectors.txt", "cat", "-k", "3")
  assert rc == 0 and len(stdout.splitlines()) == 3
  rc, _, err = call_cli("wordvec", "train", *flags[:-1], "--dim", "9")
  assert rc == 2 and "dim 8 -> 9" in err and "use another --out" in err
  assert "no step was trained" not in err
  rc, _, err = call_cli("wordvec", "neighbors", out / "vectors.txt", "unicorn")
  assert rc == 2 and "'unicorn' is not in the vectors' vocabulary" in err
  rc, _, err = call_cli("wordvec", "evaluate", out / "vectors.txt")
  assert rc == 2 and "--similarity" in err
  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "mine.txt").write_text("keep me")
  rc, _, err = call_cli("wordvec", "train", *flags[:2], "--out", taken)
  assert rc == 2 and "not a flaxbert run directory" in err
  assert (taken / "mine.txt").read_text() == "keep me"
  rc, _, err = call_cli("wordvec", "convert", out / "vectors.txt", taken / "mine.txt",
                        "--to", "glove")
  assert rc == 2 and "already exists" in err


def test_embed_words_gives_bank_a_vector_per_context(minilm_dir, tmp_path):
  texts = tmp_path / "bank.txt"
  texts.write_text("the bank of the river\nthe bank to open an account\n"
                   "we sat on the river bank.\n")
  out = tmp_path / "words.npz"
  rc, stdout, _ = call_cli("embed", minilm_dir, "--input", texts, "--output", out, "--words",
                           "--quiet")
  assert rc == 0 and "17 word vectors x 384" in stdout
  saved = np.load(out)
  words = list(saved["words"])
  assert words[:5] == ["the", "bank", "of", "the", "river"] and words[-1] == "bank."
  assert list(saved["text"]) == [0] * 5 + [1] * 6 + [2] * 6
  unit = saved["vectors"] / np.linalg.norm(saved["vectors"], axis=1, keepdims=True)
  river, money, river_again = unit[[1, 6, 16]]
  # A static vector of "bank" has cosine 1.0 with itself by construction; MiniLM's differ,
  # and the two river banks are closer than a river bank and a money bank.
  assert river @ money < 0.9
  assert river @ river_again > river_again @ money + 0.1
