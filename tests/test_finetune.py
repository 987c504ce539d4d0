"""Fine-tuning end to end with the real all-MiniLM-L6-v2 weights on small subsets of the
shared data: loss falls, dev beats the majority baseline, `predict` + `evaluate` reproduce the
training-time dev score, and a killed run resumes bitwise exactly."""

import json
import os
import signal
import subprocess
import sys
import threading
import time


from conftest import SHARED_DATA, call_cli

TIMING = ("steps_per_s", "tokens_per_s")


def rows(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def untimed(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows(workdir)]


def finetune(task, workdir, minilm_dir, *extra):
  data = {"classify": ("sentiment", "train.tsv", "dev.tsv"),
          "ner": ("ner", "train.conll", "dev.conll"), "qa": ("qa", "train.json", "dev.json"),
          "pairs": ("wsd_pairs", "train.tsv", "dev.tsv")}[task]
  return ["finetune", "classify" if task == "pairs" else task,
          "--train", os.path.join(SHARED_DATA, data[0], data[1]),
          "--dev", os.path.join(SHARED_DATA, data[0], data[2]),
          "--init", minilm_dir, "--workdir", workdir, "--quiet", "--log-every", "2", *extra]


def check_run(workdir, task, metric):
  results = json.load(open(os.path.join(workdir, "results.json")))
  losses = [r["loss"] for r in rows(workdir)]
  assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
  best = results["best"]
  assert best["score"] > results["majority_baseline"][metric], results
  for path in ("best/config.json", "best/finetune.json", "bundle/params", "tensorboard"):
    assert os.path.exists(os.path.join(workdir, path)), path
  config = json.load(open(os.path.join(workdir, "best", "config.json")))
  assert config["labels"] == results["labels"]
  return results


def predict_and_evaluate(task, bundle, gold, predictions):
  """`flaxbert predict` on the gold file, then `flaxbert evaluate` against it: the scores.
  These and the fine-tuning runs below call the CLI in the test process (`call_cli`); only
  the run that is killed is a process of its own."""
  rc, out, err = call_cli("predict", bundle, "--task", task, "--input", gold,
                         "--output", predictions, "--quiet")
  assert rc == 0, err[-3000:]
  rc, out, err = call_cli("evaluate", "--task", task, "--predictions", predictions,
                         "--gold", gold)
  assert rc == 0, err
  return json.loads(out)


def test_classify_sentiment_predict_evaluate(minilm_dir, tmp_path):
  w = tmp_path / "run"
  rc, out, err = call_cli(*finetune("classify", w, minilm_dir, "--max-train-examples", "240",
                                   "--max-dev-examples", "100", "--epochs", "2",
                                   "--max-length", "48", "--batch-size", "16", "--lr", "1e-4"))
  assert rc == 0, err[-3000:]
  results = check_run(w, "classify", "accuracy")
  assert results["labels"] == ["negative", "neutral", "positive"]
  dev = results["dev_file"]
  rc, out, err = call_cli("predict", w / "best", "--task", "classify", "--input", dev,
                         "--output", tmp_path / "pred.tsv", "--quiet")
  assert rc == 0, err[-3000:]
  assert open(tmp_path / "pred.tsv").readline().rstrip("\n").split("\t") == [
      "sentence", "label", "prediction", "prob_negative", "prob_neutral", "prob_positive"]
  rc, out, err = call_cli("evaluate", "--task", "classify", "--predictions",
                          tmp_path / "pred.tsv")
  assert rc == 0, err
  assert json.loads(out) == results["best"]["dev"]


def test_ner_f1_is_seqeval_on_written_predictions(minilm_dir, tmp_path):
  # A real subset dense in entities (95% of the shared file's tokens are "O"), so a few
  # dozen CPU steps are enough to find some entities.
  sentences = open(os.path.join(SHARED_DATA, "ner", "train.conll"),
                   encoding="utf-8").read().strip().split("\n\n")
  dense = [s for s in sentences if "\tB-" in s][:200]
  (tmp_path / "train.conll").write_text("\n\n".join(dense) + "\n", encoding="utf-8")
  w = tmp_path / "run"
  args = finetune("ner", w, minilm_dir, "--max-dev-examples", "100", "--epochs", "2",
                  "--max-length", "48", "--batch-size", "8", "--lr", "5e-4")
  args[args.index("--train") + 1] = tmp_path / "train.conll"
  rc, out, err = call_cli(*args)
  assert rc == 0, err[-3000:]
  results = check_run(w, "ner", "f1")
  from seqeval.metrics import f1_score
  from flaxbert.tasks import ner
  gold, pred = ner.read_predictions(str(w / "predictions" / "dev.conll"))
  assert results["best"]["score"] == f1_score(gold, pred)
  scores = predict_and_evaluate("ner", w / "best", results["dev_file"], tmp_path / "pred.conll")
  assert scores["f1"] == results["best"]["score"]


def test_qa_predict_evaluate(minilm_dir, tmp_path):
  w = tmp_path / "run"
  rc, out, err = call_cli(*finetune("qa", w, minilm_dir, "--max-train-examples", "200",
                                   "--max-dev-examples", "50", "--epochs", "1",
                                   "--max-length", "96", "--doc-stride", "48",
                                   "--batch-size", "8", "--lr", "3e-4"))
  assert rc == 0, err[-3000:]
  results = check_run(w, "qa", "f1")
  scores = predict_and_evaluate("qa", w / "best", results["dev_file"], tmp_path / "pred.json")
  assert scores == results["best"]["dev"]


def test_pair_classification_resumes_exactly_after_sigkill(minilm_dir, tmp_path):
  args = ["--max-train-examples", "96", "--max-dev-examples", "48", "--epochs", "1",
          "--max-length", "32", "--batch-size", "8", "--checkpoint-every", "3",
          "--sync-checkpoints", "--log-every", "1"]
  # The run to be killed starts first, in a process of its own; a thread kills it once
  # checkpoint 6 is committed and the run has gone on past it, while this process makes the
  # uninterrupted reference run (the two share the two cores).
  workdir = tmp_path / "killed"
  proc = subprocess.Popen([sys.executable, "-m", "flaxbert.cli",
                           *map(str, finetune("pairs", workdir, minilm_dir, *args))],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"

  def kill_past_checkpoint_6():
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
      if ((workdir / "checkpoints" / "6").is_dir() and metrics.exists()
          and len(metrics.read_text().splitlines()) >= 7):
        break
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)

  killer = threading.Thread(target=kill_past_checkpoint_6, daemon=True)
  killer.start()
  reference = tmp_path / "reference"
  rc, _, err = call_cli(*finetune("pairs", reference, minilm_dir, *args))
  assert rc == 0, err[-3000:]
  want = untimed(reference)
  assert [r["step"] for r in want] == list(range(1, 13)) and "dev_accuracy" in want[-1]

  killer.join(timeout=420)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert len(metrics.read_text().splitlines()) < 12, "finished before the kill"
  rc, _, err = call_cli(*finetune("pairs", workdir, minilm_dir, *args))
  assert rc == 0, err[-3000:]
  assert "resuming from step" in err
  assert untimed(workdir) == want   # bitwise: floats compared exactly
  best = json.load(open(workdir / "best_score.json"))
  assert best == json.load(open(reference / "best_score.json"))
