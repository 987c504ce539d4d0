"""`flaxbert report`: a run's metrics, settings and best dev predictions as one HTML page.

  flaxbert report WORKDIR [--out DIR]     index.html + PNG plots (default WORKDIR/report)

matplotlib is an optional extra (`pip install 'flaxbert[report]'`); see flaxbert.report.
"""

from __future__ import annotations

from flaxbert.errors import FlaxbertError


def run_report(args) -> None:
  try:
    from flaxbert import report
  except ImportError as e:
    if (e.name or "").split(".")[0] != "matplotlib":
      raise
    raise FlaxbertError("flaxbert report draws its plots with matplotlib, which is not "
                        "installed: pip install 'flaxbert[report]'") from None
  index, pngs = report.write_report(args.workdir, args.out)
  print(f"wrote report {index} ({len(pngs)} plots: {', '.join(pngs)})")


def register(sub) -> None:
  p = sub.add_parser("report", help="write an HTML page with plots of a run's metrics "
                     "(loss, learning rate, dev/eval curves, confusion matrix)")
  p.add_argument("workdir", metavar="WORKDIR", help="training run directory (its metrics.jsonl, "
                 "run_config.json and, for fine-tunes, results.json)")
  p.add_argument("--out", metavar="DIR", help="report directory: new, or an earlier report of "
                 "the same WORKDIR, which is replaced (default: WORKDIR/report)")
  p.set_defaults(func=run_report)
