"""Distillation: the student built from the teacher's layers, the KD loss against its formula
in numpy, the feature terms' objective against distill_losses' paper losses, and `flaxbert
distill` end to end on a tiny classify teacher with a narrower student and every loss term
(losses fall, best/ predicts, the projection stays in the checkpoints, a run stopped by
SIGTERM resumes to the uninterrupted run's metrics, bad input is one line); the teacher's
outputs cached, and unlabelled transfer sets of ner, qa and regression teachers."""

import json
import os
import signal
import threading
import time
import types

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from conftest import SHARED_DATA, call_cli, snapshot
from flaxbert import bundle as bundle_lib
from flaxbert import sharding
from flaxbert.bundle import student as student_lib
from flaxbert.data import finetuning, pipeline, readers
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError
from flaxbert.recipes import distill as distill_lib
from flaxbert.models.factory import dummy_inputs
from flaxbert.training import losses, objectives, teacher_cache
from flaxbert.training.run import _latest_params
from flaxbert.training.state import place_params


def test_layer_indices_are_evenly_spaced_like_distilbert():
  assert student_lib.layer_indices(12, 6) == [0, 2, 4, 7, 9, 11]   # DistilBERT's layers
  assert student_lib.layer_indices(6, 3) == [0, 3, 5]
  assert student_lib.layer_indices(6, 6) == list(range(6))
  assert student_lib.layer_indices(4, 1) == [3]
  with pytest.raises(FlaxbertError, match="the teacher has 6 layers"):
    student_lib.layer_indices(6, 7)


@pytest.fixture(scope="module")
def classify_teacher(tmp_path_factory):
  """A 4-layer random BERT (hidden 32) with a classification head over sentiment's labels."""
  from conftest import make_hf_checkpoint
  root = tmp_path_factory.mktemp("distill_teacher")
  make_hf_checkpoint(str(root / "hf"), num_hidden_layers=4, hidden_size=32,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                     seed=5)
  labels = ["negative", "neutral", "positive"]
  bundle = bundle_lib.load(str(root / "hf"), head="classification", num_labels=3, labels=labels)
  bundle.labels = labels
  # A confident teacher (a random head's logits are near 0: nothing to distil), with queries,
  # keys and values 4 times larger: attention and value relations with shape (a random
  # model's are all near uniform: nothing for MiniLM's loss to learn).
  dense = bundle.params["classifier"]["dense"]
  dense["kernel"] = dense["kernel"] * 30
  qkv = bundle.params["bert"]["encoder"]["layers"]["attention"]["qkv"]
  qkv["kernel"] = qkv["kernel"] * 4
  bundle_lib.replace(str(root / "teacher"), bundle,
                     files={"finetune.json": {"task": "classify", "max_seq_length": 32}})
  return str(root / "teacher")


def test_student_takes_the_chosen_layers_embeddings_and_head(classify_teacher):
  teacher = bundle_lib.load(classify_teacher)
  student = student_lib.build_student(teacher, None, 2)
  assert student.config.num_layers == 2 and student.head == "classification"
  assert student.labels == teacher.labels and student.model.num_labels == 3
  t_layers = teacher.params["bert"]["encoder"]["layers"]
  s_layers = student.params["bert"]["encoder"]["layers"]
  for t, s in zip(jax.tree.leaves(t_layers), jax.tree.leaves(s_layers)):
    assert s.shape == (2,) + t.shape[1:]
    np.testing.assert_array_equal(s, np.asarray(t)[[0, 3]])
  for group in ("classifier",):
    for t, s in zip(jax.tree.leaves(teacher.params[group]), jax.tree.leaves(student.params[group])):
      np.testing.assert_array_equal(s, t)
  rest = lambda p: {k: v for k, v in p["bert"].items() if k != "encoder"}   # noqa: E731
  for t, s in zip(jax.tree.leaves(rest(teacher.params)), jax.tree.leaves(rest(student.params))):
    np.testing.assert_array_equal(s, t)
  # The student runs: the model of its params (shapes agree) gives logits for 3 labels.
  ids = np.array([[2, 40, 50, 3]])
  out = student.model.apply({"params": student.params}, ids, np.zeros_like(ids),
                            np.ones_like(ids), deterministic=True)
  assert out["logits"].shape == (1, 3)
  fresh = student_lib.build_student(teacher, "tiny", 1)
  assert (fresh.config.num_layers, fresh.config.hidden_size) == (1, 128)
  assert fresh.config.vocab_size == teacher.config.vocab_size


def test_student_of_another_checkpoint_gets_the_teachers_head(classify_teacher, tiny_hf):
  teacher = bundle_lib.load(classify_teacher)
  student = student_lib.build_student(teacher, tiny_hf, None)   # same vocabulary, 2 x 96
  assert (student.config.num_layers, student.config.hidden_size) == (2, 96)
  assert student.head == "classification" and student.model.num_labels == 3
  assert student.labels == teacher.labels
  with pytest.raises(FlaxbertError, match="a student bundle keeps its own layers"):
    student_lib.build_student(teacher, tiny_hf, 1)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_kd_loss_matches_numpy_and_is_finetuning_at_alpha_0():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(6, 3)) * 3, rng.normal(size=(6, 3)) * 3
  label = np.array([0, 2, -1, 1, -1, 2])          # -1: unlabelled (KD only)
  weight = np.array([1, 1, 1, 1, 1, 0.0])          # the last row is padding
  batch = {"label": label, "example_weight": weight}
  T, alpha = 2.5, 0.3
  objective_loss = losses.distill_loss(alpha)
  sums = losses.distill_sums("classification", {"logits": s}, {"logits": t}, batch, T)
  loss = float(objective_loss(sums, losses.distill_totals("classification", batch)))
  pt, ps = _softmax(t / T), _softmax(s / T)
  kl = T * T * (pt * (np.log(pt) - np.log(ps))).sum(-1)
  labelled = weight * (label >= 0)
  nll = -np.log(_softmax(s)[np.arange(6), np.maximum(label, 0)])
  want = alpha * (kl * weight).sum() / weight.sum() + (1 - alpha) * (
      nll * labelled).sum() / labelled.sum()
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  # alpha 0, T 1, every example labelled: exactly the fine-tuning loss
  batch = {"label": np.array([0, 2, 1, 1, 0, 2]), "example_weight": weight}
  sums = losses.distill_sums("classification", {"logits": s}, {"logits": t}, batch, 1.0)
  plain = losses.head_sums("classification", {"logits": s}, batch)
  np.testing.assert_allclose(
      float(losses.distill_loss(0.0)(sums, losses.distill_totals("classification", batch))),
      float(plain["loss"] / plain["weight"]), rtol=1e-6)


def test_kd_loss_of_tokens_and_spans_masks_what_the_task_does():
  rng = np.random.default_rng(1)
  T = 2.0
  s, t = rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 4))
  labels = np.array([[-1, 1, -1, 3, -1], [-1, 0, 2, -1, -1]])  # first sub-tokens only
  sums = losses.distill_sums("tagging", {"logits": s}, {"logits": t}, {"labels": labels}, T)
  pt, ps = _softmax(t / T), _softmax(s / T)
  kl = T * T * (pt * (np.log(pt) - np.log(ps))).sum(-1)
  np.testing.assert_allclose(float(sums["kd_loss"]), kl[labels >= 0].sum(), rtol=1e-5)
  assert float(sums["kd_weight"]) == 4
  mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
  out_s = {"start_logits": s[..., 0], "end_logits": s[..., 1]}
  out_t = {"start_logits": t[..., 0], "end_logits": t[..., 1]}
  batch = {"input_mask": mask, "start_position": np.array([1, -1]),
           "end_position": np.array([2, -1])}
  sums = losses.distill_sums("span_qa", out_s, out_t, batch, T)
  want = 0
  for row in range(2):
    n = mask[row].sum()
    for k in (0, 1):
      a, b = _softmax(t[row, :n, k] / T), _softmax(s[row, :n, k] / T)
      want += 0.5 * T * T * (a * (np.log(a) - np.log(b))).sum()
  np.testing.assert_allclose(float(sums["kd_loss"]), want, rtol=1e-5)
  totals = losses.distill_totals("span_qa", batch)
  assert float(totals["hard"]) == 1 and float(totals["kd"]) == 2


TIMING = ("steps_per_s", "tokens_per_s")


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def _unlabeled(directory):
  """16 texts without labels, one a line: sentiment dev sentences past the dev subset."""
  path = os.path.join(directory, "unlabeled.txt")
  with open(os.path.join(SHARED_DATA, "sentiment", "dev.tsv"), encoding="utf-8") as f:
    lines = f.read().splitlines()[100:116]
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(line.split("\t")[0] + "\n" for line in lines))
  return path


def _distill(teacher, workdir, *extra):
  return ["distill", "--teacher", teacher,
          "--train", os.path.join(SHARED_DATA, "sentiment", "train.tsv"),
          "--dev", os.path.join(SHARED_DATA, "sentiment", "dev.tsv"), "--workdir", workdir,
          "--max-train-examples", "48", "--max-dev-examples", "32", "--max-length", "32",
          "--batch-size", "8", "--epochs", "2", "--lr", "2e-3", "--log-every", "1", "--sync-checkpoints", "--quiet", *extra]


def _narrow_config(directory):
  """An HF config.json of a student narrower than the teacher (16 wide, 4 heads of 4; the
  teacher is 32 wide, 2 heads of 16): a projection and regrouped relation heads needed. Its
  initializer range is large enough that its queries and keys are not all near 0, where the
  attention relations' gradients vanish (a run of 9 steps would hardly move them)."""
  path = os.path.join(directory, "narrow.json")
  with open(path, "w") as f:
    json.dump({"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
               "intermediate_size": 32, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
               "attention_probs_dropout_prob": 0.0, "initializer_range": 0.2}, f)
  return path


def _student(directory):
  """A fresh 2-layer narrow student (it starts far from the teacher; the students taken from
  the teacher's layers start close, see the test above), learning the teacher's logits,
  hidden states (through a projection to the teacher's width) and last-layer attention
  relations (4 heads against 2: regrouped into 2 relation heads)."""
  return ("--student", _narrow_config(directory), "--alpha", "0.9",
          "--hidden-weight", "1", "--attention-weight", "1", "--relation-heads", "2")


def test_distill_learns_the_teacher_resumes_exactly_and_best_predicts(classify_teacher,
                                                                     tmp_path):
  before = snapshot(classify_teacher)
  student = (*_student(tmp_path), "--unlabeled", _unlabeled(tmp_path))
  reference = str(tmp_path / "reference")
  rc, out, err = call_cli(*_distill(classify_teacher, reference, *student))
  assert rc == 0, err[-3000:]
  assert "2-layer student" in out
  rows = _metrics(reference)
  # 48 labelled + 16 unlabelled examples, 8 a batch, 2 epochs
  assert [r["step"] for r in rows] == list(range(1, 17)) and "dev_accuracy" in rows[-1]
  kd = [r["kd_loss"] for r in rows]
  assert sum(kd[-3:]) < 0.7 * sum(kd[:3]), kd   # the student learns the teacher's outputs
  for name, ratio in (("hidden_loss", 0.9), ("attention_loss", 0.5)):   # and its features
    values = [r[name] for r in rows]
    assert sum(values[-3:]) < ratio * sum(values[:3]), (name, values)
  for r in rows:   # the logged loss is the objective: KD/hard mix + the weighted terms
    np.testing.assert_allclose(r["loss"], 0.9 * r["kd_loss"] + 0.1 * r["hard_loss"]
                               + r["hidden_loss"] + r["attention_loss"], rtol=1e-4)
  results = json.load(open(os.path.join(reference, "results.json")))
  assert (results["task"], results["student_layers"], results["teacher_layers"]) == (
      "classify", 2, 4)
  assert (results["train_examples"], results["train_features"]) == (48, 64)
  assert results["layer_map"] == [[0, 0], [1, 2], [2, 4]] and results["relation_heads"] == 2
  assert snapshot(classify_teacher) == before   # the teacher is only read
  # best/ is a bundle like any other: predict + evaluate give its recorded dev score
  dev = os.path.join(reference, "data", "dev_subset.tsv")
  predictions = str(tmp_path / "dev_predictions.tsv")
  rc, _, err = call_cli("predict", os.path.join(reference, "best"), "--task", "classify",
                        "--input", dev, "--output", predictions, "--quiet")
  assert rc == 0, err[-3000:]
  rc, out, err = call_cli("evaluate", "--task", "classify", "--predictions", predictions,
                          "--gold", dev)
  assert rc == 0, err
  assert json.loads(out)["accuracy"] == results["best"]["dev"]["accuracy"]
  config = json.load(open(os.path.join(reference, "best", "config.json")))
  assert config["config"]["num_layers"] == 2 and config["labels"] == results["labels"]
  # The checkpoints hold the trained projection to the teacher's width; best/ and bundle/
  # the student alone (bundle/: the last checkpoint's student, exactly).
  checkpoint = _latest_params(reference)
  assert set(checkpoint) == {"student", "projection"}
  assert checkpoint["projection"]["kernel"].shape == (16, 32)
  final = bundle_lib.load(os.path.join(reference, "bundle"))
  assert final.config.hidden_size == 16 and set(final.params) == {"bert", "classifier"}
  jax.tree.map(np.testing.assert_array_equal, final.params, checkpoint["student"])
  exported = str(tmp_path / "exported")   # `flaxbert export WORKDIR`: the student too
  rc, _, err = call_cli("export", reference, "--out", exported)
  assert rc == 0, err[-3000:]
  jax.tree.map(np.testing.assert_array_equal, bundle_lib.load(exported).params, final.params)

  # SIGTERM mid-run (this process; the loop checkpoints and exits 143), then the same
  # command: it resumes and ends with the uninterrupted run's metrics, bit for bit.
  stopped = str(tmp_path / "stopped")
  metrics = os.path.join(stopped, "metrics.jsonl")

  def term_after_step_5():
    deadline = time.time() + 300
    while time.time() < deadline:
      if os.path.isfile(metrics) and len(open(metrics).read().splitlines()) >= 5:
        os.kill(os.getpid(), signal.SIGTERM)
        return
      time.sleep(0.02)

  killer = threading.Thread(target=term_after_step_5, daemon=True)
  killer.start()
  with pytest.raises(SystemExit) as stop:
    call_cli(*_distill(classify_teacher, stopped, *student))
  killer.join()
  assert stop.value.code == 143
  assert len(_metrics(stopped)) < 16
  rc, _, err = call_cli(*_distill(classify_teacher, stopped, *student))
  assert rc == 0, err[-3000:]
  assert "resuming from step" in err
  assert _metrics(stopped) == rows
  assert json.load(open(os.path.join(stopped, "best_score.json"))) == json.load(
      open(os.path.join(reference, "best_score.json")))


def test_bad_teacher_or_student_is_one_line(classify_teacher, tiny_hf, tmp_path):
  for teacher, message in ((str(tmp_path / "absent"), "no such bundle"),
                           (tiny_hf, "the teacher must be fine-tuned")):
    rc, out, err = call_cli(*_distill(teacher, str(tmp_path / "w")))
    assert rc == 2 and err.strip().splitlines() == [f"flaxbert: error: --teacher {teacher}: "
                                                    + err.split(f"{teacher}: ", 1)[1].strip()]
    assert message in err
  rc, _, err = call_cli(*_distill(classify_teacher, str(tmp_path / "w2"), "--student-layers",
                                  "9"))
  assert rc == 2 and "the teacher has 4 layers" in err, err
  rc, _, err = call_cli(*_distill(classify_teacher, str(tmp_path / "w3"), "--unlabeled",
                                  str(tmp_path / "absent.txt")))
  assert rc == 2 and "absent.txt: no such file" in err, err
  # A student of another head count needs --relation-heads (caught before any training), and
  # --relation-heads the attention loss.
  narrow = ("--student", _narrow_config(tmp_path), "--attention-weight", "1")
  rc, _, err = call_cli(*_distill(classify_teacher, str(tmp_path / "w4"), *narrow))
  assert rc == 2 and "give --relation-heads R" in err, err
  assert not os.path.isdir(str(tmp_path / "w4" / "checkpoints"))
  rc, _, err = call_cli(*_distill(classify_teacher, str(tmp_path / "w5"), "--relation-heads",
                                  "2"))
  assert rc == 2 and "give --attention-weight" in err, err
  assert "Traceback" not in err


def test_ner_teacher_distils_into_a_tagging_bundle(classify_teacher, tmp_path):
  """The token head through the same run: a few steps, dev scores (dev tags the 16 training
  sentences lack are the teacher's), and a best/ bundle of the teacher's head and labels.
  The span head's loss is checked against numpy above; a qa run is left out for the suite's
  time (it runs the same way: `flaxbert distill --teacher QA_BUNDLE`)."""
  tags = ["O", "B-company", "B-facility", "B-geo-loc", "B-movie", "B-musicartist", "B-other",
          "B-person", "B-product", "B-sportsteam", "B-tvshow", "I-company", "I-facility",
          "I-geo-loc", "I-movie", "I-musicartist", "I-other", "I-person", "I-product",
          "I-sportsteam", "I-tvshow"]
  hf = os.path.join(os.path.dirname(classify_teacher), "hf")
  teacher = bundle_lib.load(hf, head="tagging", num_labels=len(tags), labels=tags)
  teacher.labels = tags
  path = str(tmp_path / "teacher")
  bundle_lib.replace(path, teacher)
  workdir = str(tmp_path / "w")
  raw = tmp_path / "raw.txt"   # unlabelled sentences: the teacher's tags on each first piece
  raw.write_text("Paris is nice in spring\nunbelievably tall towers\n", encoding="utf-8")
  rc, out, err = call_cli(
      "distill", "--teacher", path, "--unlabeled", str(raw),
      "--train", os.path.join(SHARED_DATA, "ner", "train.conll"),
      "--dev", os.path.join(SHARED_DATA, "ner", "dev.conll"), "--workdir", workdir,
      "--max-train-examples", "16", "--max-dev-examples", "8", "--max-length", "32",
      "--batch-size", "8", "--max-steps", "2", "--student-layers", "1", "--quiet")
  assert rc == 0, err[-3000:]
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["task"] == "ner" and results["student_layers"] == 1
  assert results["train_features"] == 16 + 2
  assert "dev_f1" in results["final"]
  rows = _metrics(workdir)
  assert all(np.isfinite(r["kd_loss"]) and r["kd_loss"] >= 0 for r in rows)
  config = json.load(open(os.path.join(workdir, "best", "config.json")))
  assert config["head"] == "tagging" and config["labels"] == tags
  assert config["config"]["num_layers"] == 1


# --- --cache-teacher, and --unlabeled for ner, qa and regression teachers --------------------

def _losses(workdir):
  return [(r["step"], r["loss"], r["kd_loss"], r["hard_loss"]) for r in _metrics(workdir)]


def test_cached_teacher_outputs_give_the_uncached_losses(classify_teacher, tmp_path):
  """The teacher's outputs computed once (its own pass, in record order) and joined to the
  shuffled batches by example give the student's loss sums of the teacher run inside the
  step; a second call reads the stored outputs back; another teacher is another key."""
  teacher = bundle_lib.load(classify_teacher)
  train = tmp_path / "train.tsv"
  with open(os.path.join(SHARED_DATA, "sentiment", "dev.tsv"), encoding="utf-8") as f:
    train.write_text("".join(f.readlines()[:33]), encoding="utf-8")   # a header, 32 rows
  data = pipeline.finetune_data(
      "classification", {"train": [str(train), _unlabeled(tmp_path)]},
      os.path.join(os.path.dirname(classify_teacher), "hf"),
      str(tmp_path / "prepared"), max_seq_length=32, labels=teacher.labels,
      unlabeled=[_unlabeled(tmp_path)])
  mesh = sharding.make_mesh()
  store = str(tmp_path / "teacher_outputs")
  cached = teacher_cache.teacher_outputs(teacher, data, mesh, store, 48, show_progress=False)
  assert set(cached) == {"teacher_logits"} and cached["teacher_logits"].shape == (32 + 16, 3)
  again = teacher_cache.teacher_outputs(teacher, data, mesh, store, 48, show_progress=False)
  np.testing.assert_array_equal(again["teacher_logits"], cached["teacher_logits"])
  student = student_lib.build_student(teacher, None, 1)
  placed = place_params(teacher.model, teacher.params, mesh, dummy_inputs())
  runs = {"plain": (objectives.distillation(student.model, teacher.model, "classification",
                                            2.0, 0.5), (placed,), None),
          "cached": (objectives.distillation_from_batch(student.model, "classification", 2.0,
                                                        0.5), (), cached)}
  sums_of = {}
  for name, (objective, frozen, joined) in runs.items():
    def sums(params, batch, *frozen, objective=objective):
      with nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
        return objective.sums(params, batch, None, *frozen)
    sums = jax.jit(sums)
    batches = data.batches("train", batch_size=16, seed=3, joined=joined)
    sums_of[name] = []
    with jax.set_mesh(mesh):
      for _ in range(4):   # past an epoch of 48 examples: reshuffled
        batch = {k: v for k, v in next(batches).items() if v.dtype != object}
        out = sums(student.params, sharding.global_batch(batch, mesh), *frozen)
        sums_of[name].append([float(out[k]) for k in ("kd_loss", "loss", "weight")])
  np.testing.assert_allclose(sums_of["cached"], sums_of["plain"], rtol=1e-5)
  assert len({row[0] for row in sums_of["plain"]}) == 4   # other examples in each batch
  digest = teacher_cache.teacher_digest(teacher)
  dense = teacher.params["classifier"]["dense"]
  dense["bias"] = dense["bias"] + 1
  assert teacher_cache.teacher_digest(teacher) != digest
  with pytest.raises(FlaxbertError, match="--cache-teacher stores the teacher's outputs"):
    distill_lib.check_cache_teacher(types.SimpleNamespace(cache_teacher=True,
                                                          hidden_weight=1.0))


def test_unlabeled_ner_sentences_teach_every_first_sub_token(tiny_hf, tmp_path):
  """Raw sentences beside CoNLL: tags -1, `kd_token_mask` on each word's first piece; in the
  loss they add to the KD term and not to the hard one."""
  raw = tmp_path / "raw.txt"
  raw.write_text("Paris is nice\n\nunbelievably tall towers\n", encoding="utf-8")
  conll = os.path.join(SHARED_DATA, "ner", "dev.conll")
  data = pipeline.finetune_data("tagging", {"train": [conll, str(raw)]}, tiny_hf,
                                str(tmp_path / "prepared"), max_seq_length=16, unlabeled=[str(raw)])
  assert data.labels[0] == "O"   # the tags of the CoNLL file alone
  n = data.num_examples("train")
  records = data.sources["train"]
  tokenizer = load_tokenizer(tiny_hf)
  for index, words in ((n - 2, "Paris is nice".split()),
                       (n - 1, "unbelievably tall towers".split())):
    record = records[index]
    assert np.all(record["labels"] == -1)
    pieces = [len(p) or 1 for p in tokenizer.encode_batch(words)]
    firsts = np.cumsum([1] + pieces[:-1])
    want = np.zeros(len(record["input_ids"]), np.int32)
    want[firsts] = 1
    np.testing.assert_array_equal(record["kd_token_mask"], want)
  labelled = records[0]
  np.testing.assert_array_equal(labelled["kd_token_mask"], labelled["labels"] >= 0)
  # The loss: the unlabelled rows' first pieces count in KD, never in the hard term.
  batch = next(data.batches("train", batch_size=n, shuffle=False, num_epochs=1))
  rng = np.random.default_rng(0)
  s = rng.normal(size=batch["labels"].shape + (len(data.labels),))
  t = rng.normal(size=s.shape)
  sums = losses.distill_sums("tagging", {"logits": s}, {"logits": t}, batch, 1.0)
  mask = batch["kd_token_mask"]
  assert float(sums["kd_weight"]) == mask.sum() > (batch["labels"] >= 0).sum()
  assert float(sums["weight"]) == (batch["labels"] >= 0).sum()
  only_unlabelled = {**batch, "example_weight": np.arange(n) >= n - 2}
  sums = losses.distill_sums("tagging", {"logits": s}, {"logits": t}, only_unlabelled, 1.0)
  assert float(sums["kd_loss"]) > 0 and float(sums["loss"]) == 0 == float(sums["weight"])


def test_unlabeled_regression_values_are_nan_and_kd_only(tiny_hf, tmp_path):
  """A regression transfer set's unlabelled rows (NaN: -1 is a value) add to the KD term
  alone, and leave the gradient finite."""
  train, raw = tmp_path / "train.tsv", tmp_path / "raw.txt"
  train.write_text("a fine film\t-1.0\nnot good\t2.0\n", encoding="utf-8")
  raw.write_text("more text\n", encoding="utf-8")
  data = pipeline.finetune_data("regression", {"train": [str(train), str(raw)]}, tiny_hf,
                                str(tmp_path / "prepared"), max_seq_length=16,
                                unlabeled=[str(raw)])
  labels = next(data.batches("train", batch_size=3, shuffle=False, num_epochs=1))["label"]
  assert labels[0] == -1 and labels[1] == 2 and np.isnan(labels[2])
  s = jnp.array([[0.5], [1.0], [-2.0]])
  t = np.array([[0.0], [3.0], [-1.0]])
  batch = {"label": labels[[0, 2, 1]], "example_weight": np.ones(3, np.float32)}

  def loss(student):
    sums = losses.distill_sums("regression", {"logits": student}, {"logits": t}, batch, 2.0)
    return losses.distill_loss(0.5)(sums, losses.distill_totals("regression", batch))

  want = 0.5 * ((0.5 ** 2 + 2.0 ** 2 + 1.0 ** 2) / 3) + 0.5 * ((1.5 ** 2 + 4.0 ** 2) / 2)
  np.testing.assert_allclose(float(loss(s)), want, rtol=1e-6)
  assert np.all(np.isfinite(jax.grad(loss)(s)))


def test_qa_teacher_distils_with_unlabeled_questions_from_its_cache(classify_teacher,
                                                                   tmp_path):
  """A span teacher, answered and unanswered (KD-only) questions, outputs cached."""
  hf = os.path.join(os.path.dirname(classify_teacher), "hf")
  teacher = bundle_lib.load(hf, head="span_qa")
  path = str(tmp_path / "teacher")
  bundle_lib.replace(path, teacher)
  train = json.load(open(os.path.join(SHARED_DATA, "qa", "train.json")))
  questions = [dict(p, qas=[{"id": f"u{q['id']}", "question": q["question"]}
                            for q in p["qas"]])
               for p in train["data"][5]["paragraphs"][:2]]
  unlabeled = tmp_path / "unlabeled.json"
  unlabeled.write_text(json.dumps({"data": [{"paragraphs": questions}]}), encoding="utf-8")
  workdir = str(tmp_path / "w")
  rc, out, err = call_cli(
      "distill", "--teacher", path, "--train", os.path.join(SHARED_DATA, "qa", "train.json"),
      "--dev", os.path.join(SHARED_DATA, "qa", "dev.json"), "--workdir", workdir,
      "--max-train-examples", "4", "--max-dev-examples", "2", "--max-length", "64",
      "--batch-size", "8", "--max-steps", "2", "--student-layers", "1", "--cache-teacher",
      "--unlabeled", str(unlabeled), "--log-every", "1", "--quiet")
  assert rc == 0, err[-3000:]
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["task"] == "qa" and "dev_f1" in results["final"]
  assert results["train_features"] > results["train_examples"] == 4
  cache = os.path.join(workdir, "data", "teacher_outputs")
  [key] = os.listdir(cache)
  start = np.load(os.path.join(cache, key, "teacher_start_logits.npy"))
  assert start.shape == (results["train_features"], 64)
  rows = _metrics(workdir)
  assert all(np.isfinite(r["kd_loss"]) and np.isfinite(r["hard_loss"]) for r in rows)
  # the unanswered questions' windows have no span to learn: the KD term alone
  windows = list(finetuning.squad_examples(load_tokenizer(hf), readers.read_squad(
      str(unlabeled), readers.SkipCounter("t")), 64, 32, 16, unlabeled=True))
  assert windows and all((w["start_position"], w["end_position"]) == (-1, -1)
                         for _, w in windows)


# --- feature (intermediate) distillation ------------------------------------------------------

def test_feature_objective_adds_the_weighted_paper_losses_to_the_kd_loss(classify_teacher,
                                                                        tmp_path):
  from flaxbert.training import distill_features, distill_losses, objectives
  teacher = bundle_lib.load(classify_teacher)
  # The recipe's own student (the end-to-end run above compiled its init) and initial params
  fresh = student_lib.fresh(teacher, _narrow_config(tmp_path), None, 0)
  student = fresh.model
  trained = distill_features.StudentWithProjection(student, 32)
  initial = distill_features.initial_params(trained, fresh.params, jax.random.key(1))
  assert set(initial) == {"student", "projection"}   # the projection: 16 wide -> 32 wide
  assert initial["projection"]["kernel"].shape == (16, 32)
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 900, size=(4, 12)).astype(np.int32)
  mask = np.ones((4, 12), np.int32)
  mask[1, 7:] = 0
  mask[2, 3:] = 0
  batch = {"input_ids": ids, "segment_ids": np.zeros_like(ids), "input_mask": mask,
           "label": np.array([0, 2, -1, 1]), "example_weight": np.array([1, 1, 1, 0.0])}
  features = distill_features.FeatureSettings(
      hidden_weight=0.5, attention_weight=0.25, layer_map=((0, 0), (1, 2), (2, 4)),
      relation_heads=2)
  args = (teacher.model, "classification", 2.0, 0.7)
  plain = objectives.distillation(student, *args)
  with_features = objectives.feature_distillation(trained, *args, features)
  off = objectives.feature_distillation(trained, *args, distill_features.FeatureSettings())

  @jax.jit   # one compilation: eager applies of the scanned models compile op by op
  def compute(params, teacher_params, batch):
    def loss_of(objective, params, batch=batch):
      sums = objective.sums(params, batch, None, teacher_params)
      return objective.loss(sums, objective.totals(batch)), sums
    loss, sums = loss_of(with_features, params)
    # The paper losses straight from distill_losses, the padding row (weight 0) left out.
    inputs = {k: batch[k] for k in ("input_ids", "segment_ids", "input_mask")}
    _, (t_hidden, t_attention) = distill_features.apply_sown(teacher.model, teacher_params,
                                                            None, **inputs)
    _, (s_hidden, s_attention) = distill_features.apply_sown(student, params["student"], None,
                                                            **inputs)
    real = batch["input_mask"] * (batch["example_weight"][:, None] > 0)
    projection = params["projection"]
    project = lambda h: h @ projection["kernel"] + projection["bias"]  # noqa: E731
    hidden = distill_losses.hidden_state_loss(s_hidden, t_hidden, real, features.layer_map,
                                              project)
    attention = distill_losses.minilm_loss(s_attention, t_attention, real, relation_heads=2)
    # Microbatch sums (two halves of the batch) add up to the whole batch's loss.
    def half(i):
      cut = lambda x, axis: jax.lax.slice_in_dim(x, 2 * i, 2 * i + 2, axis=axis)  # noqa: E731
      sown = [(cut(hidden_states, 1), jax.tree.map(lambda x: cut(x, 0), relations))
              for hidden_states, relations in ((s_hidden, s_attention), (t_hidden, t_attention))]
      return distill_features.feature_sums(*sown, cut(real, 0), features, project)
    added = jax.tree.map(lambda a, b: a + b, half(0), half(1))
    totals = distill_features.feature_totals(real)
    return {"loss": loss, "metrics": with_features.summarise(sums),
            "plain": loss_of(plain, params["student"])[0],
            "off": off.loss(sums, off.totals(batch)),   # weights 0
            "hidden": hidden, "attention": attention,
            "features": distill_features.feature_loss(features, sums, totals),
            "accumulated": distill_features.feature_loss(features, added, totals)}

  out = jax.device_get(compute(initial, teacher.params, batch))
  hidden, attention = float(out["hidden"]), float(out["attention"])
  assert hidden > 0 and attention > 0
  np.testing.assert_allclose(out["loss"], out["plain"] + 0.5 * hidden + 0.25 * attention,
                             rtol=1e-5)
  metrics = out["metrics"]
  np.testing.assert_allclose([metrics["hidden_loss"], metrics["attention_loss"], metrics["loss"]],
                             [hidden, attention, out["loss"]], rtol=1e-5)
  np.testing.assert_allclose(out["features"], 0.5 * hidden + 0.25 * attention, rtol=1e-5)
  np.testing.assert_allclose(out["accumulated"], out["features"], rtol=1e-5)
  # Weights 0: the logit distillation's loss (its sums unchanged by the sowing forward passes)
  np.testing.assert_allclose(out["off"], out["plain"], rtol=1e-6)
