"""`flaxbert serve`'s HTTP application (starlette): routes, request checks, limits, errors.

    GET  /ping          200 {"status": "ready"} once every shape is compiled; 503 before
    POST /invocations   application/json {"inputs": [...]} (or {"instances": [...]}) ->
                        {"outputs": [...]}, one answer per input in input order (serve/answers.py)
    GET  /metrics       Prometheus text format (serve/metrics.py)

Every refusal is a JSON object {"error": one line} with its status: 400 malformed JSON, wrong
fields or input types, a text past the model's positions under `reject_long`; 413 past
`max_body_bytes`, `max_inputs` or `max_chars` (these also name the limit: "limit"); 415 a
body that is not application/json; 404 and 405 for other paths and methods; 503 with
Retry-After while compiling or when the queue is full; 500 when the model fails (the server
keeps serving). One access-log line per request (method, path, status, ms, inputs) goes to
the "flaxbert.access" logger (stderr under `flaxbert serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flaxbert.errors import FlaxbertError
from flaxbert.inference import bucketing
from flaxbert.inference.onnx_serving import OnnxServingModel
from flaxbert.inference.serving import ServingModel
from flaxbert.serve.answers import answers_for, default_max_length
from flaxbert.serve.batcher import Batcher, Closed, QueueFull, batch_sizes
from flaxbert.serve.metrics import CONTENT_TYPE, ServeMetrics
from flaxbert.serve.model_source import open_model

access_log = logging.getLogger("flaxbert.access")
RETRY_AFTER_SECONDS = "1"


@dataclasses.dataclass(frozen=True)
class ServeOptions:
  max_batch_size: int = 32     # rows per model call; 1: no dynamic batching
  # How long a row waits for others to fill its batch. 0, as TF Serving's batching guide
  # advises for CPUs: an idle model runs a lone request at once (a wait only adds latency),
  # and under load the rows that queued while the model was busy form the next batch.
  max_wait_ms: float = 0.0
  max_queue: int = 1024        # rows waiting for the model before requests get 503
  max_inputs: int = 256        # inputs per request
  max_chars: int = 20000       # characters per text
  max_body_bytes: int = 4 << 20
  max_length: int | None = None   # input tokens (default: as offline inference, see answers)
  reject_long: bool = False    # 400 for a text the model would see cut, instead of cutting
  top_k: int = 5               # fill-mask candidates per [MASK]

  def check(self) -> None:
    for name in ("max_batch_size", "max_queue", "max_inputs", "max_chars", "max_body_bytes",
                 "top_k"):
      if getattr(self, name) < 1:
        raise FlaxbertError(f"--{name.replace('_', '-')} must be positive, got "
                            f"{getattr(self, name)}")
    if self.max_wait_ms < 0:
      raise FlaxbertError(f"--max-wait-ms must not be negative, got {self.max_wait_ms}")


class RequestError(Exception):
  """A refused request: its status, one line, the limit it broke (if one), headers."""

  def __init__(self, status: int, message: str, reason: str, limit: str | None = None,
               headers: dict | None = None):
    super().__init__(message)
    self.status, self.message, self.reason, self.limit = status, message, reason, limit
    self.headers = headers or {}

  def response(self) -> JSONResponse:
    body = {"error": self.message, **({"limit": self.limit} if self.limit else {})}
    return JSONResponse(body, self.status, headers=self.headers)


class Serving:
  """The state behind the routes: the model, its answers, the batcher, the metrics."""

  def __init__(self, model: ServingModel, options: ServeOptions):
    options.check()
    self.model, self.options = model, options
    self.max_length = options.max_length or default_max_length(model.manifest)
    if not 3 <= self.max_length <= model.max_length:
      raise FlaxbertError(f"--max-length {self.max_length} must be between 3 and the model's "
                          f"{model.max_length} positions")
    self.answers = answers_for(model.manifest, model.tokenizer, self.max_length, options.top_k)
    self.backend = "onnx" if isinstance(model, OnnxServingModel) else "xla"
    answers = self.answers
    self.buckets = bucketing.default_buckets(self.max_length)
    self.metrics = ServeMetrics(batch_sizes(options.max_batch_size))
    if self.backend == "onnx":
      # onnxruntime computes the outputs (the parameters are inside model.onnx); the answers'
      # on-device part (softmax, pooling, top-k) still compiles once per shape.
      self.compiled = bucketing.CompiledCache(lambda both: answers.device(*both))
      infer = model.onnx_outputs

      def run_batch(batch):
        outputs = infer(batch["input_ids"], batch["segment_ids"], batch["input_mask"])
        return self.compiled((outputs, batch))
    else:
      call = model.exported.call

      def run(params, batch):
        outputs = call(params, batch["input_ids"], batch["segment_ids"], batch["input_mask"])
        return answers.device(outputs, batch)

      self.compiled = run_batch = bucketing.CompiledCache(run, model.params)
    self.metrics.compiled_shapes.set_function(lambda: len(self.compiled.shapes))
    self.batcher = Batcher(run_batch, buckets=self.buckets,
                           pad_id=model.tokenizer.pad_id, per_token=answers.per_token,
                           max_batch_size=options.max_batch_size,
                           max_wait_ms=options.max_wait_ms, max_queue=options.max_queue,
                           observe_batch=self.metrics.batch_size.observe,
                           observe_depth=self.metrics.queue_depth.set)
    self.on_failure = lambda message: None   # serve() stops the server

  @property
  def head(self) -> str:
    return self.model.head

  # --- a request's inputs --------------------------------------------------------------------

  async def read_items(self, request: Request) -> list:
    options = self.options
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
      raise RequestError(415, f"expected Content-Type application/json, got {kind or 'none'}",
                         "content_type")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > options.max_body_bytes:
      raise _too_large_body(options.max_body_bytes)
    body = bytearray()
    async for chunk in request.stream():
      body += chunk
      if len(body) > options.max_body_bytes:
        raise _too_large_body(options.max_body_bytes)
    try:
      payload = json.loads(bytes(body))
    except ValueError as e:   # JSONDecodeError, or bytes that are not UTF-8
      raise RequestError(400, f"malformed JSON: {str(e).splitlines()[0]}", "bad_json") from None
    if not isinstance(payload, dict) or len({"inputs", "instances"} & set(payload)) != 1:
      raise RequestError(400, 'expected a JSON object {"inputs": [...]} (or {"instances": '
                         '[...]})', "bad_fields")
    unknown = sorted(set(payload) - {"inputs", "instances"})
    if unknown:
      raise RequestError(400, f"unknown field {unknown[0]!r} (expected only \"inputs\" or "
                         "\"instances\")", "bad_fields")
    items = payload.get("inputs", payload.get("instances"))
    if not isinstance(items, list) or not items:
      raise RequestError(400, "inputs must be a non-empty list of texts (or text pairs)",
                         "bad_fields")
    if len(items) > options.max_inputs:
      raise RequestError(413, f"{len(items)} inputs exceed max_inputs {options.max_inputs} "
                         "per request", "max_inputs", "max_inputs")
    for i, item in enumerate(items):
      texts = item.values() if isinstance(item, dict) else \
          item if isinstance(item, list) else [item]
      longest = max((len(t) for t in texts if isinstance(t, str)), default=0)
      if longest > options.max_chars:
        raise RequestError(413, f"input {i}: a text of {longest} characters exceeds max_chars "
                           f"{options.max_chars}", "max_chars", "max_chars")
    return items

  async def answer(self, items: list) -> list:
    try:
      rows, finish = await run_in_threadpool(self.answers.prepare, items)
      cut = self.options.reject_long and await run_in_threadpool(self.answers.too_long, items)
    except FlaxbertError as e:
      raise RequestError(400, str(e), "bad_input") from None
    if cut:
      index, tokens, limit = cut
      raise RequestError(400, f"input {index}: {tokens} tokens exceed the {limit} the model "
                         "takes (the server rejects long texts instead of cutting them)",
                         "too_long", "max_length")
    try:
      future = self.batcher.submit(rows)
    except QueueFull:
      raise RequestError(503, f"the queue is full ({self.batcher.depth} rows waiting, "
                         f"max_queue {self.options.max_queue}); retry later", "queue_full",
                         "max_queue", {"Retry-After": RETRY_AFTER_SECONDS}) from None
    except Closed:
      raise RequestError(503, "the server is shutting down", "closing",
                         headers={"Retry-After": RETRY_AFTER_SECONDS}) from None
    try:
      outputs = await asyncio.wrap_future(future)
    except Exception as e:  # the batch failed; Batcher logged it
      raise RequestError(500, f"the model failed: {type(e).__name__}", "model_failed") from None
    return await run_in_threadpool(finish, outputs)


def _too_large_body(limit: int) -> RequestError:
  return RequestError(413, f"the request body exceeds max_body_bytes {limit}",
                      "max_body_bytes", "max_body_bytes")


# --- routes ----------------------------------------------------------------------------------

async def ping(request: Request) -> Response:
  serving: Serving = request.app.state.serving
  if serving.batcher.ready.is_set():
    return JSONResponse({"status": "ready", "head": serving.head})
  status = "failed" if serving.batcher.failure else "compiling"
  return JSONResponse({"status": status}, 503, headers={"Retry-After": RETRY_AFTER_SECONDS})


async def invocations(request: Request) -> Response:
  serving: Serving = request.app.state.serving
  if not serving.batcher.ready.is_set():
    raise RequestError(503, "the model is still compiling", "not_ready",
                       headers={"Retry-After": RETRY_AFTER_SECONDS})
  with serving.metrics.in_progress.track_inprogress():
    items = await serving.read_items(request)
    request.state.inputs = len(items)
    outputs = await serving.answer(items)
  serving.metrics.inputs.inc(len(items))
  return JSONResponse({"outputs": outputs})


async def metrics(request: Request) -> Response:
  return Response(request.app.state.serving.metrics.render(), media_type=CONTENT_TYPE)


async def _refused(request: Request, error: RequestError) -> Response:
  request.app.state.serving.metrics.errors.labels(error.reason).inc()
  return error.response()


async def _http_error(request: Request, error: HTTPException) -> Response:
  request.app.state.serving.metrics.errors.labels(f"http_{error.status_code}").inc()
  return JSONResponse({"error": error.detail}, error.status_code, headers=error.headers)


async def _server_error(request: Request, error: Exception) -> Response:
  request.app.state.serving.metrics.errors.labels("internal").inc()
  return JSONResponse({"error": f"internal error: {type(error).__name__}"}, 500)


class AccessLog:
  """ASGI middleware: one line per request, and the request metrics."""

  def __init__(self, app, serving: Serving):
    self.app, self.serving = app, serving

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    start, status = time.perf_counter(), [500]
    state = scope.setdefault("state", {})

    async def send_status(message):
      if message["type"] == "http.response.start":
        status[0] = message["status"]
      await send(message)

    try:
      await self.app(scope, receive, send_status)
    finally:
      seconds = time.perf_counter() - start
      self.serving.metrics.request(scope["path"], status[0], seconds)
      access_log.info("%s %s %d %.1fms inputs=%d", scope["method"], scope["path"], status[0],
                      seconds * 1000, state.get("inputs", 0))


def build_app(model: ServingModel | str, options: ServeOptions | None = None, *,
              int8: bool = False, backend: str = "auto", **settings) -> Starlette:
  """The application over a loaded ServingModel, or a serving export's or a bundle's
  directory (`int8`: a bundle's int8 export; `backend`: model_source.BACKENDS);
  `settings`: ServeOptions fields. Its lifespan starts the batcher (which compiles every
  shape, then /ping turns 200) and at shutdown drains it."""
  model = (open_model(model, int8=int8, backend=backend)
           if isinstance(model, (str, os.PathLike)) else model)
  options = dataclasses.replace(options or ServeOptions(), **settings)
  serving = Serving(model, options)

  @contextlib.asynccontextmanager
  async def lifespan(app):
    serving.batcher.start(lambda message: serving.on_failure(message))
    try:
      yield
    finally:
      await run_in_threadpool(serving.batcher.close)

  app = Starlette(routes=[Route("/ping", ping, methods=["GET"]),
                          Route("/invocations", invocations, methods=["POST"]),
                          Route("/metrics", metrics, methods=["GET"])],
                  exception_handlers={RequestError: _refused, HTTPException: _http_error,
                                      Exception: _server_error},
                  lifespan=lifespan)
  app.state.serving = serving
  app.add_middleware(AccessLog, serving=serving)
  return app
