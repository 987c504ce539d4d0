"""General distillation (`flaxbert distill --objective mlm`): the MLM KD loss against its
formula in numpy, and a run end to end on a tiny confident MLM teacher, with the feature terms
on packed rows: the KD, hidden-state and attention losses fall, the projection stays in the
checkpoints, the student's bundle fills masks and embeds; the student takes the teacher's
embeddings and heads where shapes allow, and a teacher without an MLM head is one line."""

import dataclasses
import json
import os
import types

import jax
import numpy as np
import pytest

from conftest import call_cli, make_hf_checkpoint
from data_fixtures import head_lines, shared
from flaxbert import bundle as bundle_lib
from flaxbert.bundle import student as student_lib
from flaxbert.errors import FlaxbertError
from flaxbert.models.factory import build_model
from flaxbert.recipes import distill_mlm
from flaxbert.recipes.distill_feature_settings import feature_settings
from flaxbert.training import losses
from flaxbert.training.run import _latest_params


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_mlm_kd_loss_matches_numpy():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(2, 3, 7)) * 3, rng.normal(size=(2, 3, 7)) * 3
  ids = rng.integers(0, 7, size=(2, 3))
  weights = np.array([[1, 1, 0], [1, 0, 0.0]])    # padding prediction slots weigh 0
  T, alpha = 2.0, 0.7
  sums = losses.mlm_distill_sums({"mlm_logits": s}, {"mlm_logits": t},
                                 {"masked_ids": ids, "masked_weights": weights}, T)
  loss = float(losses.mlm_distill_loss(alpha)(
      sums, losses.mlm_distill_totals({"masked_weights": weights})))
  lt, ls = _log_softmax(t / T), _log_softmax(s / T)
  kl = T * T * (np.exp(lt) * (lt - ls)).sum(-1)
  nll = -np.take_along_axis(_log_softmax(s), ids[..., None], -1)[..., 0]
  want = (alpha * (kl * weights).sum() + (1 - alpha) * (nll * weights).sum()) / weights.sum()
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  metrics = losses.summarise_mlm_distill(alpha)(sums)
  np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-5)
  hits = ((t.argmax(-1) == ids) * weights).sum() / weights.sum()
  np.testing.assert_allclose(float(metrics["teacher_mlm_accuracy"]), hits, rtol=1e-6)


@pytest.fixture(scope="module")
def mlm_teacher(tmp_path_factory):
  """A 4-layer random BertForMaskedLM (hidden 32, 2 heads), made confident (a random MLM
  head's distribution is near uniform: nothing to distil) and with sharper attention (queries
  and keys x 10: at a random init's scale every attention distribution is near uniform, the
  student's as well as the teacher's, and the attention loss near 0), and a corpus with
  held-out text."""
  root = tmp_path_factory.mktemp("distill_mlm")
  make_hf_checkpoint(str(root / "hf"), architecture="BertForMaskedLM", num_hidden_layers=4,
                     hidden_size=32, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=64, seed=7)
  bundle = bundle_lib.load(str(root / "hf"))
  assert bundle.head == "pretraining"
  norm = bundle.params["mlm"]["transform_norm"]
  norm["scale"] = np.asarray(norm["scale"]) * 100
  qkv = bundle.params["bert"]["encoder"]["layers"]["attention"]["qkv"]
  qkv["kernel"] = np.asarray(qkv["kernel"]) * np.array([10, 10, 1])[:, None, None]
  bundle_lib.replace(str(root / "teacher"), bundle)
  head_lines(shared("corpus", "kjv.txt"), str(root / "corpus.txt"), 400)
  with open(shared("corpus", "kjv.txt"), encoding="utf-8") as f:
    held = [next(f) for _ in range(600)][450:]
  (root / "held.txt").write_text("".join(held), encoding="utf-8")
  return root


def _args(root, workdir, *extra):
  return ["distill", "--objective", "mlm", "--teacher", root / "teacher",
          "--corpus", root / "corpus.txt", "--eval-corpus", root / "held.txt",
          "--workdir", workdir, "--steps", "12", "--batch-size", "8", "--max-length", "32",
          "--lr", "3e-4", "--warmup-steps", "0", "--log-every", "1", "--eval-every", "4",
          "--eval-batches", "1", "--checkpoint-every", "12", "--quiet", *extra]


def test_mlm_distillation_learns_the_teacher_and_makes_a_bundle(mlm_teacher, tmp_path):
  workdir = tmp_path / "run"
  rc, out, err = call_cli(*_args(mlm_teacher, workdir, "--alpha", "0.9", "--pack",
                                 "--hidden-weight", "10", "--attention-weight", "10"))
  assert rc == 0, err
  assert "general distillation done: 2-layer student of a 4-layer teacher" in out
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows] == list(range(1, 13))
  # The KD, hidden-state and attention losses on the same held-out batch at steps 4, 8 and
  # 12 fall.
  for name, ratio in (("eval_kd_loss", 0.8), ("eval_hidden_loss", 0.9),
                      ("eval_attention_loss", 0.8)):
    held_out = [r[name] for r in rows if name in r]
    assert len(held_out) == 3 and held_out[2] < held_out[1] < held_out[0], (name, held_out)
    assert held_out[2] < ratio * held_out[0], (name, held_out)
  assert {"eval_mlm_loss", "eval_mlm_accuracy", "eval_teacher_mlm_accuracy"} <= set(rows[-1])
  for r in rows:   # the logged loss is the objective: KD/MLM mix + the weighted terms
    np.testing.assert_allclose(r["loss"], 0.9 * r["kd_loss"] + 0.1 * r["mlm_loss"]
                               + 10 * (r["hidden_loss"] + r["attention_loss"]), rtol=1e-4)
  # The trained tree is {"student"} (the widths are equal: no projection); bundle/ and
  # `flaxbert export WORKDIR` hold the student's parameters, as the last checkpoint does.
  checkpoint = _latest_params(str(workdir))
  assert set(checkpoint) == {"student"}
  student = bundle_lib.load(str(workdir / "bundle"))
  assert student.head == "pretraining" and student.config.num_layers == 2
  assert set(student.params) == {"bert", "mlm", "nsp"}
  jax.tree.map(np.testing.assert_array_equal, student.params, checkpoint["student"])
  rc, _, err = call_cli("export", workdir, "--out", tmp_path / "exported")
  assert rc == 0, err
  jax.tree.map(np.testing.assert_array_equal,
               bundle_lib.load(str(tmp_path / "exported")).params, student.params)
  assert student.tokenizer.vocab_size == 1000
  # The student bundle is a bundle like any other: fill-mask and embed take it.
  rc, out, err = call_cli("fill-mask", workdir / "bundle", "in the [MASK] was", "--top-k", "2")
  assert rc == 0 and len(out.strip().splitlines()) >= 2, err
  (tmp_path / "in.txt").write_text("and god said\nlet there be light\n", encoding="utf-8")
  rc, _, err = call_cli("embed", workdir / "bundle", "--input", tmp_path / "in.txt",
                        "--output", tmp_path / "out.npz", "--quiet")
  assert rc == 0, err
  assert np.load(tmp_path / "out.npz")["embeddings"].shape == (2, 32)


def test_a_fresh_student_takes_the_teachers_embeddings_and_heads_where_shapes_allow():
  def bundle(width):
    params = {"bert": {"embeddings": {"word": np.full((10, width), float(width))},
                       "encoder": {"w": np.full((width, width), float(width))}},
              "mlm": {"bias": np.full((10,), float(width)),
                      "transform": np.full((width, width), float(width))},
              "nsp": {"dense": np.full((width, 2), float(width))}}
    return bundle_lib.Bundle(None, params, None, None, "pretraining")
  groups = (student_lib.EMBEDDINGS, student_lib.MLM, student_lib.NSP)
  taken, names = student_lib.with_teacher_groups(bundle(4), bundle(8), groups)
  assert names == []   # other widths: the student keeps its own
  assert taken.params["mlm"]["bias"][0] == 4
  teacher = dataclasses.replace(bundle(4), params=jax.tree.map(lambda x: x + 1, bundle(4).params))
  taken, names = student_lib.with_teacher_groups(bundle(4), teacher, groups)
  assert names == ["bert/embeddings", "mlm", "nsp"]
  assert taken.params["bert"]["embeddings"]["word"][0, 0] == 5
  assert taken.params["bert"]["encoder"]["w"][0, 0] == 4   # the encoder stays the student's
  assert taken.params["mlm"]["transform"][0, 0] == 5 and taken.params["nsp"]["dense"][0, 0] == 5


def test_a_narrower_student_trains_beside_a_projection(mlm_teacher):
  """A student 16 wide with 4 heads of a teacher 32 wide with 2 (the e2e run's student has the
  teacher's width): the trained tree is the student beside a fresh projection to 32 wide,
  only when the hidden-state term is on; head counts that differ need --relation-heads."""
  teacher = bundle_lib.load(str(mlm_teacher / "teacher"))
  config = teacher.config.replace(hidden_size=16, num_heads=4, intermediate_size=32,
                                  num_layers=2)
  student = dataclasses.replace(teacher, config=config, params={"bert": "the student's"},
                                model=build_model(config, "pretraining"))
  cfg = types.SimpleNamespace(hidden_weight=1.0, attention_weight=1.0, relation_heads=None,
                              layer_map=None, seed=0)
  with pytest.raises(FlaxbertError, match="the teacher has 2 attention heads and the student "
                     "4; give --relation-heads R"):
    feature_settings(cfg, teacher, student)
  cfg.relation_heads = 2
  trained, params, key = distill_mlm.trained_tree(
      cfg, student, teacher, feature_settings(cfg, teacher, student))
  assert key == "student" and set(params) == {"student", "projection"}
  assert params["student"] == {"bert": "the student's"}
  assert params["projection"]["kernel"].shape == (16, 32)
  assert trained.student is student.model
  cfg.hidden_weight = 0.0   # the attention relations alone: no projection to train
  _, params, _ = distill_mlm.trained_tree(cfg, student, teacher,
                                          feature_settings(cfg, teacher, student))
  assert set(params) == {"student"}
  cfg.attention_weight = 0.0   # no feature terms: the student alone, as without this part
  assert distill_mlm.trained_tree(cfg, student, teacher, feature_settings(
      cfg, teacher, student)) == (student.model, student.params, None)


def test_teacher_without_mlm_head_or_corpus_is_one_line(mlm_teacher, tmp_path):
  classifier = tmp_path / "cls"
  make_hf_checkpoint(str(classifier), architecture="BertForSequenceClassification",
                     num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                     intermediate_size=48, max_position_embeddings=64)
  args = _args(mlm_teacher, tmp_path / "run")
  args[args.index("--teacher") + 1] = classifier
  rc, _, err = call_cli(*args)
  assert rc == 2
  assert err.strip().splitlines() == [
      f"flaxbert: error: --teacher {classifier}: a BertForSequenceClassification model without "
      "an MLM head; --objective mlm distils a pretrained one (`flaxbert pretrain`'s bundle, or "
      "an HF BertForPreTraining / BertForMaskedLM checkpoint)"]
  assert not os.path.exists(tmp_path / "run")
  with pytest.raises(SystemExit) as exit_:   # argparse: --corpus is required
    call_cli("distill", "--objective", "mlm", "--teacher", mlm_teacher / "teacher",
             "--workdir", tmp_path / "run")
  assert exit_.value.code == 2 and not os.path.exists(tmp_path / "run")
  rc, _, err = call_cli(*_args(mlm_teacher, tmp_path / "run", "--layer-map", "0:0,2:4"))
  assert rc == 2 and not os.path.exists(tmp_path / "run")
  assert err.strip().splitlines() == [
      "flaxbert: error: --layer-map: the hidden-state loss is off; give --hidden-weight"]
