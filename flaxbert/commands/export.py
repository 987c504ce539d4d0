"""`flaxbert export`: a training run's newest checkpoint as a bundle, or a bundle for serving.

  flaxbert export WORKDIR --out BUNDLE                  the bundle of a run's newest checkpoint
  flaxbert export BUNDLE --serving --out DIR [--int8] [--platforms cpu cuda tpu] [--onnx]
      StableHLO + params + tokenizer + manifest, one module lowered for every platform given
      (default all three), and with --onnx model.onnx for onnxruntime; see
      flaxbert.inference.serving and flaxbert.inference.onnx_serving
"""

from __future__ import annotations

from flaxbert.errors import FlaxbertError

PLATFORMS = ("cpu", "cuda", "tpu")   # flaxbert.inference.serving.PLATFORMS, without importing jax


def run_export(args) -> None:
  if args.serving:
    from flaxbert import bundle as bundle_lib
    from flaxbert.inference.serving import export_serving
    bundle = bundle_lib.load(args.source)
    extra = None
    if args.onnx:
      from flaxbert.inference import onnx_export, onnx_serving
      onnx_export.check_supported(bundle.config, bundle.head)   # before the export's work
      extra = onnx_serving.onnx_files(bundle, args.int8)
    manifest = export_serving(bundle, args.out, int8=args.int8, platforms=args.platforms,
                              extra_files=extra)
    size = sum(record["bytes"] for record in manifest["files"].values())
    detail = (f", int8 matmuls and embeddings: parameters {manifest['params']['reduction']}x "
              "smaller"
              if args.int8 else "")
    print(f"wrote serving export {args.out} ({manifest['head']} head, "
          f"{manifest['compute_dtype']}, {', '.join(manifest['platforms'])}; "
          f"{size / 1e6:.1f} MB{detail})")
    return
  if args.int8 or args.onnx or args.platforms != list(PLATFORMS):
    raise FlaxbertError("--int8, --onnx and --platforms apply to serving exports: add "
                        "--serving")
  from flaxbert.training.run import export_workdir
  export_workdir(args.source, args.out)
  print(f"wrote bundle {args.out}")


def register(sub) -> None:
  p = sub.add_parser("export", help="write the bundle of a run's latest checkpoint, or export "
                     "a bundle for serving (--serving)")
  p.add_argument("source", metavar="WORKDIR|BUNDLE",
                 help="training run directory; with --serving a bundle or HF BERT directory")
  p.add_argument("--out", required=True, help="new output directory")
  p.add_argument("--serving", action="store_true",
                 help="export the inference function as StableHLO (jax.export) with its "
                 "parameters, tokenizer and manifest.json; load with flaxbert.serving.load")
  p.add_argument("--int8", action="store_true",
                 help="with --serving: int8 dense kernels (per-channel scales) and embedding "
                 "tables (per-row scales), int8 x int8 matmuls on activations quantized per "
                 "token")
  p.add_argument("--platforms", nargs="+", default=list(PLATFORMS), choices=PLATFORMS,
                 help="with --serving: the platforms the one exported module is lowered for "
                 "(default: all)")
  p.add_argument("--onnx", action="store_true",
                 help="with --serving: also model.onnx for onnxruntime (int8 with --int8), the "
                 "fastest int8 route on CPUs; load with flaxbert.inference.onnx_serving.load")
  p.set_defaults(func=run_export)
