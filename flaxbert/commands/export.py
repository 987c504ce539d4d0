"""`flaxbert export WORKDIR --out BUNDLE`: the bundle of a training run's newest checkpoint."""

from __future__ import annotations


def run_export(args) -> None:
  from flaxbert.training.pretrain_run import export_bundle
  export_bundle(args.workdir, args.out)
  print(f"wrote bundle {args.out}")


def register(sub) -> None:
  p = sub.add_parser("export", help="write the bundle of a run's latest checkpoint")
  p.add_argument("workdir")
  p.add_argument("--out", required=True, help="new bundle directory")
  p.set_defaults(func=run_export)
