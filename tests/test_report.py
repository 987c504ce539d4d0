"""`flaxbert report`: the page and plots of a real tiny pretraining run and of a fine-tune
started from it, what a report may replace, and the one-line errors."""

import csv
import json
import os
import shutil
import sys
from collections import Counter

import matplotlib.image
import numpy as np
import pytest

from conftest import SHARED_DATA, call_cli, snapshot
from test_pretrain import corpus_and_tokenizer, launcher_args  # noqa: F401

from flaxbert import report


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, corpus_and_tokenizer):  # noqa: F811
  """A 12-step tiny pretraining run (MLM + NSP, evaluation every 4 steps): test_pretrain's
  reference run, whose compiled programs a full session has in its cache already."""
  workdir = tmp_path_factory.mktemp("report_pretrain") / "run"
  rc, _, err = call_cli(*launcher_args(workdir, corpus_and_tokenizer, 12))
  assert rc == 0, err[-3000:]
  return workdir


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, pretrained):
  """A 4-step sentiment fine-tune of the pretrained run's bundle, dev scored every 2 steps."""
  workdir = tmp_path_factory.mktemp("report_finetune") / "run"
  data = os.path.join(SHARED_DATA, "sentiment")
  rc, _, err = call_cli("finetune", "classify", "--train", os.path.join(data, "train.tsv"),
                        "--dev", os.path.join(data, "dev.tsv"), "--init", pretrained / "bundle",
                        "--workdir", workdir, "--max-train-examples", "32",
                        "--max-dev-examples", "32", "--epochs", "2", "--batch-size", "16",
                        "--max-length", "32", "--lr", "1e-3", "--log-every", "1", "--quiet")
  assert rc == 0, err[-3000:]
  return workdir


def metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def points(rows, key):
  return [r["step"] for r in rows if key in r], [r[key] for r in rows if key in r]


def one_error_line(rc, err):
  lines = err.strip().splitlines()
  assert rc == 2 and len(lines) == 1 and lines[0].startswith("flaxbert: error: "), err
  return lines[0]


def check_pngs(workdir, names):
  """The page shows each PNG, a real image of the size its figure is drawn at, with drawn
  content; returns the page."""
  directory = os.path.join(workdir, "report")
  html = open(os.path.join(directory, "index.html"), encoding="utf-8").read()
  figures = report.figures(report.load_run(workdir))
  for name in names:
    assert f'<img src="{name}"' in html, name
    path = os.path.join(directory, name)
    assert os.path.getsize(path) > 5000, name
    pixels = matplotlib.image.imread(path)
    width, height = figures[name].get_size_inches() * report.DPI
    assert pixels.shape == (round(height), round(width), 4), (name, pixels.shape)
    colours = np.unique(pixels.reshape(-1, 4), axis=0)
    assert len(colours) > 50, name   # lines, text and anti-aliasing, not a blank canvas
  return html


def test_pretraining_report_plots_every_logged_point(pretrained):
  rc, out, err = call_cli("report", pretrained)
  assert rc == 0, err
  directory = pretrained / "report"
  pngs = ["loss.png", "learning_rate.png", "eval.png", "training.png"]
  assert out.strip() == f"wrote report {directory / 'index.html'} (4 plots: {', '.join(pngs)})"
  html = check_pngs(pretrained, pngs)
  assert "confusion" not in html and "Best dev" not in html

  rows = metrics(pretrained)
  assert [r["step"] for r in rows] == list(range(1, 13))
  figures = report.figures(report.load_run(pretrained))
  assert list(figures) == pngs
  # The loss figure holds the loss and its MLM and NSP parts, every logged step of each.
  (axes,) = figures["loss.png"].axes
  assert [line.get_label() for line in axes.lines] == ["loss", "mlm_loss", "nsp_loss"]
  for line in axes.lines:
    steps, values = points(rows, line.get_label())
    assert list(line.get_xdata()) == steps == list(range(1, 13))
    np.testing.assert_array_equal(line.get_ydata(), values)
  (axes,) = figures["learning_rate.png"].axes
  assert list(axes.lines[0].get_ydata()) == points(rows, "learning_rate")[1]
  # One panel per evaluation metric, with the steps evaluation ran at (every 4).
  evals = {a.get_title(): a.lines[0] for a in figures["eval.png"].axes}
  assert set(evals) == {k for r in rows for k in r if k.startswith("eval_")}
  assert {"eval_loss", "eval_mlm_loss", "eval_nsp_loss"} <= set(evals)
  for key, line in evals.items():
    assert list(line.get_xdata()) == [4, 8, 12] == points(rows, key)[0]
    np.testing.assert_array_equal(line.get_ydata(), points(rows, key)[1])
  others = {a.get_title() for a in figures["training.png"].axes}
  assert {"grad_norm", "mlm_accuracy", "nsp_accuracy", "steps_per_s"} <= others

  # The run's kind, settings and final numbers are on the page.
  assert "<td>kind</td><td>pretrain</td>" in html
  assert "<td>seq_len</td><td class=n>32</td>" in html
  assert f"<td>loss</td><td class=n>12</td><td class=n>{rows[-1]['loss']:.6g}</td>" in html
  manifest = json.load(open(directory / "report.json"))
  assert manifest["workdir"] == os.path.realpath(pretrained)
  assert manifest["plots"]["loss.png"] == {"loss": 12, "mlm_loss": 12, "nsp_loss": 12}


def test_a_report_replaces_only_an_earlier_report_of_the_same_run(pretrained, tmp_path):
  out = tmp_path / "pages"
  rc, _, err = call_cli("report", pretrained, "--out", out)
  assert rc == 0, err
  first = os.stat(out / "index.html").st_ino
  rc, _, err = call_cli("report", pretrained, "--out", out)   # a newer report of the same run
  assert rc == 0, err
  assert os.stat(out / "index.html").st_ino != first
  assert not [n for n in os.listdir(tmp_path) if n != "pages"]   # no temporary left beside

  # A file of the user's in it, or a report of another run: refused, nothing touched.
  (out / "notes.txt").write_text("mine")
  before = snapshot(out)
  line = one_error_line(*call_cli("report", pretrained, "--out", out)[::2])
  assert f"{out}: already exists and is not empty" in line
  assert snapshot(out) == before
  other = tmp_path / "other"
  other.mkdir()
  shutil.copy(pretrained / "metrics.jsonl", other)
  os.remove(out / "notes.txt")
  before = snapshot(out)
  one_error_line(*call_cli("report", other, "--out", out)[::2])
  assert snapshot(out) == before


def test_finetune_report_shows_dev_curves_and_the_confusion_matrix(finetuned):
  rows = metrics(finetuned)
  assert [r["step"] for r in rows if "dev_accuracy" in r] == [2, 4]
  results = json.load(open(finetuned / "results.json"))
  dev = results["best"]["dev"]
  # The best dev predictions' confusion matrix (labels of gold and predictions, sorted; rows
  # gold, columns predicted) and per-class scores, counted from the run's own predictions
  # file. Fine-tuning writes them to best.dev in results.json once the task scores carry them
  # (flaxbert.tasks.classify); until then this test puts them there.
  with open(finetuned / "predictions" / "dev.tsv", encoding="utf-8", newline="") as f:
    pairs = [(r["label"], r["prediction"])
             for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
  labels = sorted({label for pair in pairs for label in pair})
  counts = Counter(pairs)
  matrix = np.array([[counts[(g, p)] for p in labels] for g in labels])
  assert matrix.sum() == 32 and set(labels) <= set(results["labels"])
  if "confusion_matrix" in dev:   # the run's own: it must be the one its predictions give
    assert dev["confusion_matrix"] == {"labels": labels, "matrix": matrix.tolist()}
  tp, gold_n, pred_n = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
  precision, recall = tp / np.maximum(pred_n, 1), tp / np.maximum(gold_n, 1)
  f1 = 2 * tp / np.maximum(pred_n + gold_n, 1)
  computed = {"confusion_matrix": {"labels": labels, "matrix": matrix.tolist()},
              "per_class": {label: {"precision": precision[i], "recall": recall[i],
                                    "f1": f1[i], "support": int(gold_n[i])}
                            for i, label in enumerate(labels)}}

  # Without them: the curves, the run's kind and its best score, and no such section.
  for key in computed:
    dev.pop(key, None)
  json.dump(results, open(finetuned / "results.json", "w"))
  rc, _, err = call_cli("report", finetuned)
  assert rc == 0, err
  html = check_pngs(finetuned, ["loss.png", "learning_rate.png", "eval.png", "training.png"])
  assert "<td>kind</td><td>finetune-classify</td>" in html
  assert "confusion.png" not in html and "Per-class" not in html
  assert f"<td>score</td><td class=n>{results['best']['score']:.6g}</td>" in html
  evals = {a.get_title(): a.lines[0] for a in report.figures(report.load_run(finetuned))[
      "eval.png"].axes}
  assert set(evals) == {"dev_accuracy", "dev_macro_f1", "dev_matthews"}
  assert list(evals["dev_accuracy"].get_ydata()) == points(rows, "dev_accuracy")[1]

  # With them: the matrix drawn, the per-class scores in a table.
  dev.update(computed)
  json.dump(results, open(finetuned / "results.json", "w"))
  rc, out, err = call_cli("report", finetuned)   # replaces the report above
  assert rc == 0, err
  assert "confusion.png" in out
  html = check_pngs(finetuned, ["eval.png", "confusion.png"])
  assert "<h2>Best dev predictions</h2>" in html
  for i, label in enumerate(labels):
    assert (f"<tr><td>{label}</td><td class=n>{precision[i]:.6g}</td><td class=n>"
            f"{recall[i]:.6g}</td><td class=n>{f1[i]:.6g}</td><td class=n>"
            f"{int(gold_n[i])}</td></tr>") in html
  figure = report.figures(report.load_run(finetuned))["confusion.png"]
  axes = figure.axes[0]
  colour = axes.images[0].get_array()
  np.testing.assert_allclose(colour, matrix / np.maximum(gold_n[:, None], 1))
  assert [t.get_text() for t in axes.texts] == [str(c) for c in matrix.ravel()]
  assert [t.get_text() for t in axes.get_xticklabels()] == labels

  # A matrix that does not fit its labels is one line naming results.json.
  results["best"]["dev"]["confusion_matrix"]["matrix"] = matrix.tolist()[:-1]
  json.dump(results, open(finetuned / "results.json", "w"))
  line = one_error_line(*call_cli("report", finetuned)[::2])
  assert f"{finetuned / 'results.json'}: best.dev.confusion_matrix: the matrix must be" in line


def test_evaluation_lines_of_their_own_join_their_step(tmp_path):
  lines = [{"step": s, "loss": 3.0 - 0.1 * s, "learning_rate": 1e-3} for s in range(1, 7)]
  lines[2:2] = [{"step": 3, "dev_bleu": 1.5}]
  lines += [{"step": 6, "dev_bleu": 2.5, "dev_chrf": 20.0}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  rc, out, err = call_cli("report", tmp_path)
  assert rc == 0, err
  html = check_pngs(tmp_path, ["loss.png", "learning_rate.png", "eval.png"])
  assert "training.png" not in html and "kind</td><td>unknown" in html
  figures = report.figures(report.load_run(tmp_path))
  assert list(figures["loss.png"].axes[0].lines[0].get_xdata()) == [1, 2, 3, 4, 5, 6]
  evals = {a.get_title(): a.lines[0] for a in figures["eval.png"].axes}
  assert list(evals["dev_bleu"].get_xdata()) == [3, 6]
  assert list(evals["dev_bleu"].get_ydata()) == [1.5, 2.5]
  assert list(evals["dev_chrf"].get_xdata()) == [6]


def test_bad_workdirs_are_one_line_each(tmp_path):
  line = one_error_line(*call_cli("report", tmp_path / "missing")[::2])
  assert line == f"flaxbert: error: {tmp_path / 'missing'}: no such run directory"
  empty = tmp_path / "empty"
  empty.mkdir()
  line = one_error_line(*call_cli("report", empty)[::2])
  assert f"{empty / 'metrics.jsonl'}: no such file" in line
  lines = ['{"step": 1, "loss": 2.0}', '{"step": 2, "loss": 1.5}', '{"step": 3, "loss": 1.',
           '{"step": 4, "loss": 1.0}']
  (empty / "metrics.jsonl").write_text("\n".join(lines) + "\n")
  line = one_error_line(*call_cli("report", empty)[::2])
  assert f"{empty / 'metrics.jsonl'}:3: malformed JSON" in line
  (empty / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"loss": 1.5}\n')
  line = one_error_line(*call_cli("report", empty)[::2])
  assert f"{empty / 'metrics.jsonl'}:2: expected an integer \"step\"" in line
  assert os.listdir(empty) == ["metrics.jsonl"]   # no report directory was left


def test_without_matplotlib_the_command_says_what_to_install(monkeypatch, tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
  import flaxbert
  monkeypatch.delitem(sys.modules, "flaxbert.report")
  monkeypatch.delattr(flaxbert, "report")   # else `from flaxbert import report` finds it
  for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
    monkeypatch.setitem(sys.modules, name, None)   # `import matplotlib...` now fails
  line = one_error_line(*call_cli("report", tmp_path)[::2])
  assert "pip install 'flaxbert[report]'" in line
  assert not os.path.exists(tmp_path / "report")
