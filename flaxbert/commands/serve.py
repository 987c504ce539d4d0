"""`flaxbert serve DIR`: a serving export or a bundle behind HTTP (flaxbert/serve/)."""

from __future__ import annotations

import dataclasses


def run_serve(args) -> None:
  from flaxbert.serve.app import ServeOptions
  from flaxbert.serve.server import serve
  # Every ServeOptions field is the option of the same name below.
  options = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeOptions)}
  serve(args.model, args.host, args.port, int8=args.int8, backend=args.backend, **options)


def register(sub) -> None:
  p = sub.add_parser("serve", help="serve a model over HTTP (POST /invocations, GET /ping, "
                     "GET /metrics) with dynamic batching")
  p.add_argument("model", metavar="DIR", help="a serving export (flaxbert export --serving) "
                 "or a bundle (served through its export)")
  p.add_argument("--host", default="127.0.0.1",
                 help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
  p.add_argument("--port", type=int, default=8080,
                 help="default 8080; 0: a free one (the log line says which)")
  p.add_argument("--int8", action="store_true", help="a bundle: serve its int8 export")
  p.add_argument("--backend", choices=("auto", "xla", "onnx"), default="auto",
                 help="what computes the model: xla (the StableHLO module) or onnx "
                 "(onnxruntime, the export's model.onnx: on CPUs the faster, int8 above all); "
                 "default auto: onnx on a CPU where the model has an ONNX form, else xla")
  batching = p.add_argument_group("batching")
  batching.add_argument("--max-batch-size", type=int, default=32,
                        help="rows per model call (default 32; compiled for powers of two "
                        "up to it); 1: no dynamic batching")
  batching.add_argument("--max-wait-ms", type=float, default=0.0,
                        help="how long an input waits for others to fill its batch "
                        "(default 0: a batch is whatever queued while the model was busy)")
  batching.add_argument("--max-length", type=int, default=None,
                        help="input tokens, bounding the compiled lengths (default: the "
                        "fine-tune's max_seq_length, a sentence-transformers checkpoint's, "
                        "else 128; at most the model's positions)")
  limits = p.add_argument_group("limits")
  limits.add_argument("--max-queue", type=int, default=1024,
                      help="model rows waiting (default 1024); past it requests get 503 "
                      "with Retry-After")
  limits.add_argument("--max-inputs", type=int, default=256,
                      help="inputs per request (default 256; past it 413)")
  limits.add_argument("--max-chars", type=int, default=20000,
                      help="characters per text (default 20000; past it 413)")
  limits.add_argument("--max-body-bytes", type=int, default=4 << 20,
                      help="request body bytes (default 4 MiB; past it 413)")
  limits.add_argument("--reject-long", action="store_true",
                      help="answer 400 for a text longer than --max-length tokens instead "
                      "of cutting it")
  p.add_argument("--top-k", type=int, default=5,
                 help="fill-mask: candidates per [MASK] (default 5)")
  p.set_defaults(func=run_serve)
