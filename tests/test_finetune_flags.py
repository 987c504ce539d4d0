"""The fine-tuning flags HF's run_glue/run_ner/run_qa users expect, through the CLI on a tiny
random BERT (conftest's tiny_hf) and real sentiment rows: --max-steps, --eval-every, --set
dtype=bfloat16 and dropout, --accum-steps, --warmup-ratio, --metric-for-best and
--early-stopping-patience, with a re-run that must not train an early-stopped run further."""

import json
import math
import os

import jax
import numpy as np
import pytest

import flaxbert
from conftest import SHARED_DATA, call_cli
from flaxbert import cli
from flaxbert.commands import finetune_classify
from flaxbert.errors import FlaxbertError
from flaxbert.recipes.configs import DEV_METRICS
from flaxbert.tasks import classify, ner, squad
from flaxbert.training.early_stopping import EarlyStopping

NO_DROPOUT = ("--set", "hidden_dropout=0", "--set", "attention_dropout=0")


def sentiment(init, workdir, *extra):
  data = os.path.join(SHARED_DATA, "sentiment")
  return ["finetune", "classify", "--train", os.path.join(data, "train.tsv"),
          "--dev", os.path.join(data, "dev.tsv"), "--init", init, "--workdir", workdir,
          "--quiet", "--max-train-examples", "64", "--max-dev-examples", "32",
          "--max-length", "32", "--batch-size", "8", "--log-every", "1", *extra]


def rows(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def results(workdir):
  return json.load(open(os.path.join(workdir, "results.json")))


EARLY = ("--max-steps", "20", "--lr", "1e-9", "--eval-every", "2",
         "--early-stopping-patience", "1", *NO_DROPOUT)


@pytest.fixture(scope="module")
def early_stopped(tiny_hf, tmp_path_factory):
  """A float32 run whose learning rate (1e-9) leaves the dev accuracy where it starts, so it
  stops at its second evaluation (step 4 of 20): (workdir, stdout, stderr)."""
  workdir = tmp_path_factory.mktemp("early") / "run"
  rc, out, err = call_cli(*sentiment(tiny_hf, workdir, *EARLY))
  assert rc == 0, err[-3000:]
  return workdir, out, err


def test_max_steps_eval_every_bf16_accumulation_warmup(tiny_hf, tmp_path, early_stopped):
  w = tmp_path / "run"
  # 64 examples of 8: 8 steps an epoch, 24 for the default 3 epochs; --max-steps wins.
  rc, _, err = call_cli(*sentiment(tiny_hf, w, "--max-steps", "6", "--eval-every", "2",
                                  "--set", "dtype=bfloat16", *NO_DROPOUT, "--accum-steps", "2",
                                  "--lr", "1e-3", "--warmup-ratio", "0.5"))
  assert rc == 0, err[-3000:]
  metrics = rows(w)
  assert [r["step"] for r in metrics] == [1, 2, 3, 4, 5, 6]
  evaluated = [r["step"] for r in metrics if "dev_accuracy" in r]
  assert evaluated == [2, 4, 6]
  # The dev scores --metric-for-best names (configs.DEV_METRICS) are the ones the task gives.
  assert {k for k in metrics[1] if k.startswith("dev_")} == {
      f"dev_{m}" for m in DEV_METRICS["classify"]}
  assert results(w)["steps"] == 6 and results(w)["stopped_early"] is None
  # --warmup-ratio 0.5 of the 6 steps: 3 steps up from 0, then down towards 0 at step 6.
  lrs = [r["learning_rate"] for r in metrics]
  assert lrs[0] == 0.0 and lrs[0] < lrs[1] < lrs[2] < lrs[3] > lrs[4] > lrs[5] > 0.0
  assert math.isclose(lrs[3], 1e-3, rel_tol=1e-6)
  assert math.isclose(lrs[5], 1e-3 / 3, rel_tol=1e-5)

  # bfloat16 compute with float32 parameters, as recorded and as exported.
  config = json.load(open(w / "run_config.json"))["model_config"]
  assert (config["dtype"], config["hidden_dropout"], config["attention_dropout"]) == (
      "bfloat16", 0, 0)
  model, params, _ = flaxbert.load(str(w / "bundle"))
  assert model.config.dtype == "bfloat16"
  assert {np.asarray(x).dtype for x in jax.tree.leaves(params)} == {np.dtype("float32")}
  # The first step's loss is the initial model's on the same first batch as the float32
  # run's (no dropout, same seed and data order): bfloat16 rounding moves it a little.
  bf16, f32 = metrics[0]["loss"], rows(early_stopped[0])[0]["loss"]
  assert math.isfinite(bf16) and bf16 != f32 and abs(bf16 - f32) < 0.02 * f32, (bf16, f32)


def test_early_stopping_stops_and_stays_stopped(tiny_hf, early_stopped):
  w, out, err = early_stopped
  assert [r["step"] for r in rows(w)] == [1, 2, 3, 4]
  scores = [r["dev_accuracy"] for r in rows(w) if "dev_accuracy" in r]
  assert [r["step"] for r in rows(w) if "dev_accuracy" in r] == [2, 4]
  assert scores[1] == scores[0]   # no improvement: patience 1 is used up at step 4 of 20
  done = results(w)
  assert (done["steps"], done["metric"], done["best"]["step"]) == (4, "accuracy", 2)
  assert done["final"]["dev_accuracy"] == done["best"]["score"] == scores[0]
  reason = (f"dev accuracy has not improved on {scores[0]:.6g} (step 2) in 1 evaluation "
            "(--early-stopping-patience 1)")
  assert done["stopped_early"] == reason
  assert f"flaxbert: stopping early at step 4: {reason}" in err.splitlines()
  assert "fine-tuning done (stopped early at step 4)" in out
  assert os.path.isdir(w / "bundle" / "params") and os.path.isdir(w / "best" / "params")

  # The same command again trains nothing (early_stopping.json says the run stopped) and
  # keeps what the run recorded.
  before = open(w / "metrics.jsonl").read()
  rc, _, err = call_cli(*sentiment(tiny_hf, w, *EARLY))
  assert rc == 0, err[-3000:]
  assert "this run stopped early at step 4" in err
  assert "resuming from step 4" in err   # the step it stopped at was checkpointed
  assert open(w / "metrics.jsonl").read() == before
  assert results(w) == done


def test_early_stopping_record_resumes_and_reads_lower_is_better(tmp_path):
  path = str(tmp_path / "early_stopping.json")
  early = EarlyStopping.load(path, "mse", patience=2, higher_is_better=False)
  for step, mse in ((1, 0.5), (2, 0.4), (3, 0.45), (4, 0.41)):
    early.record(step, mse)
  assert early.stopped_at() == 4
  again = EarlyStopping.load(path, "mse", patience=2, higher_is_better=False, write=False)
  assert again.evaluations == early.evaluations and again.stopped_at() == 4
  # A run resumed from the checkpoint of step 2 scores step 3 again: what was recorded from
  # step 3 on (by the run killed after it) is replaced.
  again.record(3, 0.3)
  assert again.evaluations == [(1, 0.5), (2, 0.4), (3, 0.3)] and again.stopped_at() is None
  assert EarlyStopping.load(path, "mse", 2, False).stopped_at() == 4   # write=False: untouched
  with open(path, "w") as f:
    json.dump({"evaluations": [[1, "high"]]}, f)
  with pytest.raises(FlaxbertError, match="must be a list of \\[step, score\\] pairs"):
    EarlyStopping.load(path, "mse", 2, False)


def test_dev_metrics_are_the_float_scores_the_tasks_give():
  """configs.DEV_METRICS (what --metric-for-best takes) against the tasks' own scorers (the
  classify scores are also checked on a real run above)."""
  def floats(scores):
    return tuple(k for k, v in scores.items() if isinstance(v, float))
  assert floats(classify.classification_metrics(["a", "b", "a"], ["a", "a", "a"])) == \
      DEV_METRICS["classify"]
  assert floats(classify.regression_metrics([1.0, 2.0, 3.0], [1.0, 2.5, 2.0])) == \
      DEV_METRICS["regression"]
  assert floats(ner.entity_scores([["B-PER", "O"]], [["B-PER", "B-LOC"]])) == DEV_METRICS["ner"]
  # SQuAD v2.0: one answerable question, one without an answer.
  scores = squad.score({"q1": ["the cat"], "q2": [""]}, {"q1": "a cat", "q2": ""})
  assert floats(scores) == DEV_METRICS["qa"]


def test_the_flags_parse_into_the_config():
  args = cli.build_parser().parse_args([
      "finetune", "ner", "--train", "t", "--dev", "d", "--init", "m", "--workdir", "w",
      "--steps", "7", "--eval-every", "3", "--metric-for-best", "precision",
      "--no-greater-is-better", "--early-stopping-patience", "2", "--set", "dtype=bfloat16",
      "--set", "hidden_dropout=0.2", "--accum-steps", "2", "--warmup-ratio", "0.25"])
  cfg = finetune_classify.make_config(args)
  assert (cfg.max_steps, cfg.eval_every, cfg.best_metric, cfg.higher_is_better,
          cfg.early_stopping_patience, cfg.overrides, cfg.accum_steps, cfg.warmup_ratio) == (
      7, 3, "precision", False, 2, (("dtype", "bfloat16"), ("hidden_dropout", 0.2)), 2, 0.25)
  assert (cfg.metric, cfg.best_metric, cfg.higher_is_better) == ("f1", "precision", False)
  default = finetune_classify.make_config(cli.build_parser().parse_args([
      "finetune", "classify", "--train", "t", "--dev", "d", "--init", "m", "--workdir", "w",
      "--regression", "--metric-for-best", "mse"]))
  assert (default.best_metric, default.higher_is_better) == ("mse", False)


@pytest.mark.parametrize("flags, message", [
    (("--metric-for-best", "bleu"),
     "--metric-for-best bleu: classify reports accuracy, macro_f1, matthews"),
    (("--set", "num_layers=4"), "--set num_layers: fine-tuning keeps the architecture of "
     "--init; it can set dtype, hidden_dropout, attention_dropout, attention_impl, remat"),
    (("--set", "dtype=bf16"), "config: dtype 'bf16' is not one of"),
    (("--early-stopping-patience", "0"), "--early-stopping-patience must be positive"),
    (("--max-steps", "0"), "--max-steps must be positive"),
])
def test_bad_flags_are_one_line_before_any_write(tiny_hf, tmp_path, flags, message):
  w = tmp_path / "run"
  rc, _, err = call_cli(*sentiment(tiny_hf, w, *flags))
  assert rc == 2 and err.startswith(f"flaxbert: error: {message}") and err.count("\n") == 1, err
  assert not w.exists()
