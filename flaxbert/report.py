"""`flaxbert report`: a run's workdir as one HTML page with PNG plots.

Reads WORKDIR/metrics.jsonl (one JSON object per logged step; evaluation metrics may share a
step's line or sit on a line of their own at the same step), run_config.json (the run's kind
and settings) and, for fine-tunes, results.json (the best and final dev scores; the best dev
confusion matrix and per-class scores where the task records them). The report directory
holds index.html, the PNGs it shows and report.json (the workdir it was made from and its
files: how a later report of the same workdir knows the directory is one it may replace).

Figures are drawn with matplotlib's object API on the Agg canvas: no pyplot state, no display,
safe beside a training run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from flaxbert import output_dir
from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json, read_json_lines, write_json

DPI = 100
MANIFEST = "report.json"
EVAL_PREFIXES = ("eval_", "dev_")
ANNOTATED_LABELS = 30   # beyond this many labels the counts would overlap; colours still tell


@dataclasses.dataclass
class Curve:
  steps: list[int]
  values: list[float]


@dataclasses.dataclass
class Run:
  workdir: str                  # absolute, symlinks resolved
  config: dict                  # run_config.json; {} for a workdir without one
  curves: dict[str, Curve]      # every numeric key of metrics.jsonl, in first-seen order
  lines: int                    # metric lines read
  results: dict | None          # results.json of a fine-tune


# --- reading a workdir -----------------------------------------------------------------------

def read_metrics(path: str) -> list[dict]:
  """The objects of a metrics.jsonl, each with an integer `step`; a malformed line is a
  one-line error naming the file and line (blank lines are skipped)."""
  if not os.path.isfile(path):
    raise FlaxbertError(f"{path}: no such file (a report needs a run's metrics.jsonl)")
  rows = []
  for number, row in read_json_lines(path):
    step = row.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
      raise FlaxbertError(f"{path}:{number}: expected an integer \"step\", got {step!r}")
    rows.append(row)
  if not rows:
    raise FlaxbertError(f"{path}: no metrics logged yet")
  return rows


def curves(rows: list[dict]) -> dict[str, Curve]:
  """Every numeric metric against step. A key missing from a line (evaluation metrics logged
  every few steps, or on lines of their own) simply has no point there."""
  out: dict[str, Curve] = {}
  for row in rows:
    for key, value in row.items():
      if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
        continue
      curve = out.setdefault(key, Curve([], []))
      curve.steps.append(row["step"])
      curve.values.append(float(value))
  return out


def load_run(workdir: str) -> Run:
  if not os.path.isdir(workdir):
    reason = "not a directory" if os.path.exists(workdir) else "no such run directory"
    raise FlaxbertError(f"{workdir}: {reason}")
  workdir = os.path.realpath(workdir)
  rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  config_file = os.path.join(workdir, "run_config.json")
  config = read_json(config_file) if os.path.exists(config_file) else {}
  results_file = os.path.join(workdir, "results.json")
  results = read_json(results_file) if os.path.exists(results_file) else None
  return Run(workdir, config, curves(rows), len(rows), results)


def confusion(run: Run) -> tuple[list[str], np.ndarray] | None:
  """results.json's best.dev.confusion_matrix (rows gold, columns predicted) as labels and an
  integer matrix; None where the run records none."""
  value = _best_dev(run).get("confusion_matrix")
  if value is None:
    return None
  where = f"{os.path.join(run.workdir, 'results.json')}: best.dev.confusion_matrix"
  labels = value.get("labels") if isinstance(value, dict) else None
  matrix = value.get("matrix") if isinstance(value, dict) else None
  if not isinstance(labels, list) or not labels or not isinstance(matrix, list):
    raise FlaxbertError(f"{where}: expected {{\"labels\": [...], \"matrix\": [[...], ...]}}")
  n = len(labels)
  if len(matrix) != n or any(not isinstance(r, list) or len(r) != n for r in matrix) or any(
      not _is_count(c) for r in matrix for c in r):
    raise FlaxbertError(f"{where}: the matrix must be {n} x {n} counts, one row and one "
                        f"column per label")
  return [str(label) for label in labels], np.array(matrix, np.float64).astype(np.int64)


def _is_count(value) -> bool:
  # 3.0 counts as 3: a matrix summed in floating point (numpy) is still a matrix of counts.
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and float(value).is_integer() and value >= 0)


def per_class(run: Run) -> dict[str, dict]:
  """results.json's best.dev.per_class: {label: {precision, recall, f1, support}}, or {}."""
  value = _best_dev(run).get("per_class") or {}
  if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
    raise FlaxbertError(f"{os.path.join(run.workdir, 'results.json')}: best.dev.per_class: "
                        f"expected {{label: {{precision, recall, f1, support}}}}")
  return value


def _best_dev(run: Run) -> dict:
  best = (run.results or {}).get("best")
  dev = best.get("dev") if isinstance(best, dict) else None
  return dev if isinstance(dev, dict) else {}


# --- figures ---------------------------------------------------------------------------------

def _is_eval(key: str) -> bool:
  return key.startswith(EVAL_PREFIXES)


def plot_groups(run: Run) -> dict[str, tuple[str, list[str]]]:
  """PNG name -> (title, metric keys), in page order: the training loss with its components
  (mlm_loss, nsp_loss, ...), the learning rate, the dev/eval curves, and every other metric,
  so each number of metrics.jsonl is drawn once. Groups without keys are left out."""
  keys = list(run.curves)
  train = [k for k in keys if not _is_eval(k)]
  loss = [k for k in train if k == "loss" or k.endswith("_loss")]
  lr = [k for k in train if k == "learning_rate"]
  evals = [k for k in keys if _is_eval(k)]
  other = [k for k in train if k not in loss and k not in lr]
  groups = {"loss.png": ("Training loss", loss), "learning_rate.png": ("Learning rate", lr),
            "eval.png": ("Dev / eval metrics", evals),
            "training.png": ("Other training metrics", other)}
  return {name: group for name, group in groups.items() if group[1]}


def figures(run: Run) -> dict[str, Figure]:
  """PNG name -> figure, in page order (see plot_groups; then the confusion matrix)."""
  out = {}
  for name, (title, keys) in plot_groups(run).items():
    out[name] = (_one_axes(run, title, keys) if name in ("loss.png", "learning_rate.png")
                 else _small_multiples(run, title, keys))
  matrix = confusion(run)
  if matrix is not None:
    out["confusion.png"] = _confusion_figure(*matrix)
  return out


def _figure(width: float, height: float) -> Figure:
  figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
  FigureCanvasAgg(figure)
  return figure


def _line(axes, curve: Curve, label: str) -> None:
  # Markers where points are few (evaluations), so a lone point still shows.
  marker = "o" if len(curve.steps) <= 30 else None
  axes.plot(curve.steps, curve.values, marker=marker, markersize=3, linewidth=1.2, label=label)
  axes.xaxis.set_major_locator(MaxNLocator(integer=True))   # steps, never 2.5


def _one_axes(run: Run, title: str, keys: list[str]) -> Figure:
  figure = _figure(6.4, 3.6)
  axes = figure.add_subplot()
  for key in keys:
    _line(axes, run.curves[key], key)
  axes.set_title(title)
  axes.set_xlabel("step")
  axes.grid(alpha=0.3)
  if len(keys) > 1:
    axes.legend(fontsize="small")
  return figure


def _small_multiples(run: Run, title: str, keys: list[str]) -> Figure:
  """One axes per metric: dev accuracies (0..1), losses and throughputs differ in scale by
  orders of magnitude, and one shared y axis would flatten all but the largest."""
  columns = min(3, len(keys))
  rows = math.ceil(len(keys) / columns)
  figure = _figure(3.4 * columns, 2.4 * rows + 0.4)
  figure.suptitle(title)
  for index, key in enumerate(keys):
    axes = figure.add_subplot(rows, columns, index + 1)
    _line(axes, run.curves[key], key)
    axes.set_title(key, fontsize="medium")
    axes.set_xlabel("step", fontsize="small")
    axes.tick_params(labelsize="small")
    axes.grid(alpha=0.3)
  return figure


def _confusion_figure(labels: list[str], matrix: np.ndarray) -> Figure:
  """Counts written in the cells; the colour is the fraction of each gold row, so a small
  class's errors show as plainly as a large one's."""
  n = len(labels)
  side = min(14.0, max(4.5, 0.55 * n + 2.5))
  figure = _figure(side + 1.0, side)
  axes = figure.add_subplot()
  totals = matrix.sum(axis=1, keepdims=True)
  fraction = matrix / np.maximum(totals, 1)
  image = axes.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
  figure.colorbar(image, ax=axes, shrink=0.8, label="fraction of the gold row")
  if n <= ANNOTATED_LABELS:
    for gold in range(n):
      for predicted in range(n):
        axes.text(predicted, gold, str(matrix[gold, predicted]), ha="center", va="center",
                  fontsize="small", color="white" if fraction[gold, predicted] > 0.5 else "black")
  # parse_math off: a label is text, never TeX ("$5-$10" would otherwise fail to draw).
  axes.set_xticks(range(n), labels, rotation=45 if n > 3 else 0,
                  ha="right" if n > 3 else "center", parse_math=False)
  axes.set_yticks(range(n), labels, parse_math=False)
  axes.set_xlabel("predicted")
  axes.set_ylabel("gold")
  axes.set_title(f"Best dev confusion matrix ({int(matrix.sum())} examples)")
  return figure


# --- the page --------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; font-size: 0.9em; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 1em 0; }
"""


def _format(value) -> str:
  if isinstance(value, float):
    return f"{value:.6g}"
  if value is None or isinstance(value, (bool, list, dict)):
    return json.dumps(value)
  return str(value)


def _table(rows: list[list], header: list[str] | None = None) -> str:
  def cell(value, tag="td"):
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"<{tag}{' class=n' if numeric else ''}>{html.escape(_format(value))}</{tag}>"
  head = ("<tr>" + "".join(cell(h, "th") for h in header) + "</tr>") if header else ""
  body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
  return f"<table>{head}{body}</table>"


def _scalars(values: dict) -> list[list]:
  return [[k, v] for k, v in values.items() if not isinstance(v, (dict, list))]


def _summary(run: Run) -> str:
  config = run.config
  facts = [["workdir", run.workdir], ["kind", config.get("kind", "unknown (no run_config.json)")]]
  facts += [[k, config[k]] for k in ("model", "head", "labels") if config.get(k) is not None]
  steps = sorted({s for c in run.curves.values() for s in c.steps})
  if steps:
    facts.append(["logged steps", f"{steps[0]} to {steps[-1]} ({run.lines} lines)"])
  return _table(facts)


def _numbers(run: Run) -> str:
  parts = ["<h2>Final numbers</h2>",
           _table([[k, c.steps[-1], c.values[-1]] for k, c in run.curves.items()],
                  ["metric", "last logged step", "value"])]
  results = run.results or {}
  best = results.get("best")
  if isinstance(best, dict):
    parts.append("<h2>Best dev</h2>")
    parts.append(_table(_scalars(best)))
    if _best_dev(run):
      parts.append(_table(_scalars(_best_dev(run)), ["dev metric", "at the best step"]))
  for key, title in (("final", "Final dev"), ("majority_baseline", "Majority baseline")):
    if isinstance(results.get(key), dict) and results[key]:
      parts.append(f"<h2>{title}</h2>" + _table(_scalars(results[key])))
  return "\n".join(parts)


def _per_class_table(run: Run, labels: list[str] | None) -> str:
  scores = per_class(run)
  if not scores:
    return ""
  order = [l for l in (labels or []) if l in scores] + [l for l in scores if l not in
                                                         (labels or [])]
  columns = ("precision", "recall", "f1", "support")
  rows = [[label] + [scores[label].get(c, "") for c in columns] for label in order]
  return "<h3>Per-class scores (best dev)</h3>" + _table(rows, ["label", *columns])


def page(run: Run, pngs: dict[str, str]) -> str:
  """index.html: `pngs` maps each PNG name to its caption."""
  title = f"flaxbert report: {os.path.basename(run.workdir)}"
  plots = "\n".join(
      f"<figure><img src=\"{html.escape(name)}\" alt=\"{html.escape(caption)}\">"
      f"<figcaption>{html.escape(caption)}</figcaption></figure>"
      for name, caption in pngs.items() if name != "confusion.png")
  matrix = confusion(run)
  if "confusion.png" in pngs or per_class(run):
    plots += "\n<h2>Best dev predictions</h2>"
    if "confusion.png" in pngs:
      counts = ("counts in the cells, " if len(matrix[0]) <= ANNOTATED_LABELS
                else "too many labels to print the counts; ")
      plots += ("<figure><img src=\"confusion.png\" alt=\"confusion matrix\"><figcaption>"
                f"rows gold, columns predicted; {counts}colour the fraction of the gold "
                "row</figcaption></figure>")
    plots += _per_class_table(run, matrix[0] if matrix else None)
  settings = run.config.get("settings")
  model = run.config.get("model_config")
  setting_parts = []
  if isinstance(settings, dict):
    setting_parts.append("<h2>Settings</h2>" + _table(sorted(settings.items())))
  if isinstance(model, dict):
    setting_parts.append("<h2>Model</h2>" + _table(sorted(model.items())))
  return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"<meta name=\"generator\" content=\"flaxbert report\">"
          f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
          f"<h1>{html.escape(title)}</h1>\n<h2>Run</h2>\n{_summary(run)}\n"
          f"<h2>Curves</h2>\n{plots}\n"
          f"{_numbers(run)}\n{''.join(setting_parts)}\n</body></html>\n")


# --- writing ---------------------------------------------------------------------------------

def _earlier_report(directory: str, workdir: str) -> bool:
  """True when `directory` holds a report of `workdir` and nothing else, so replacing it
  loses nothing of the user's."""
  manifest = os.path.join(directory, MANIFEST)
  if not os.path.isfile(manifest):
    return False
  try:
    record = read_json(manifest)
  except FlaxbertError:
    return False
  files = record.get("files")
  return (record.get("workdir") == workdir and isinstance(files, list)
          and set(os.listdir(directory)) <= set(files) | {MANIFEST})


@contextlib.contextmanager
def _output(directory: str, workdir: str):
  """A temporary directory that becomes `directory`: a new one renamed into place, or an
  earlier report of the same workdir swapped out atomically; anything else is refused."""
  output_dir.recover_replaced(directory)
  if _earlier_report(directory, workdir):
    with output_dir.replacing_directory(directory) as tmp:
      yield tmp
  else:
    with output_dir.new_directory(directory) as tmp:
      yield tmp


def write_report(workdir: str, out: str | None = None) -> tuple[str, list[str]]:
  """Writes the report of `workdir` (default WORKDIR/report); returns its index.html path and
  the PNGs drawn."""
  run = load_run(workdir)
  directory = os.path.abspath(out or os.path.join(run.workdir, "report"))
  drawn = figures(run)
  captions = {name: title for name, (title, _) in plot_groups(run).items()}
  captions["confusion.png"] = "Best dev confusion matrix"
  with _output(directory, run.workdir) as tmp:
    for name, figure in drawn.items():
      figure.savefig(os.path.join(tmp, name), dpi=DPI)
    with open(os.path.join(tmp, "index.html"), "w", encoding="utf-8") as f:
      f.write(page(run, {name: captions[name] for name in drawn}))
    write_json(os.path.join(tmp, MANIFEST), {
        "workdir": run.workdir, "files": ["index.html", *drawn],
        "plots": {name: {key: len(run.curves[key].steps) for key in keys}
                  for name, (_, keys) in plot_groups(run).items()}})
  return os.path.join(directory, "index.html"), list(drawn)
