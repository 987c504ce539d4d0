"""Running the serve application: the model opened (serve/model_source.py), the port bound,
uvicorn serving until SIGTERM or SIGINT, then a drain.

Bad input is one FlaxbertError line before anything listens: no such directory, neither an
export nor a bundle, a port in use. The port is bound before the model is opened, so a port
in use fails at once, and `--port 0` takes a free one (the log line says which).

On SIGTERM (or SIGINT) uvicorn stops accepting connections and waits for the requests in
flight, the batcher then runs what is queued, and `serve` returns: the process exits 0.
(uvicorn itself re-raises the signal after its graceful shutdown, which would end the process
with the signal's status; `_Server` does not.)
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading

import uvicorn

from flaxbert.errors import FlaxbertError
from flaxbert.serve.app import ServeOptions, build_app
from flaxbert.serve.model_source import open_model

log = logging.getLogger("flaxbert")


def bind(host: str, port: int) -> socket.socket:
  """A listening socket on host:port (port 0: a free one); in use is one line."""
  try:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
  except (OSError, UnicodeError) as e:
    raise FlaxbertError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") \
        from None
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
  except OSError as e:
    sock.close()
    raise FlaxbertError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
  sock.set_inheritable(True)
  return sock


class _Server(uvicorn.Server):
  """uvicorn's server, ending with status 0 after a graceful shutdown on SIGTERM/SIGINT."""

  @contextlib.contextmanager
  def capture_signals(self):
    if threading.current_thread() is not threading.main_thread():
      yield
      return
    previous = {sig: signal.signal(sig, self.handle_exit)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
      yield
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)


def serve(path: str, host: str = "127.0.0.1", port: int = 8080, *, int8: bool = False,
          backend: str = "auto", **options) -> None:
  """Serves the export or bundle at `path` on host:port until SIGTERM or SIGINT (then
  drains and returns); `options`: ServeOptions fields (max_batch_size, max_wait_ms, ...)."""
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  settings = ServeOptions(**options)
  settings.check()
  sock = bind(host, port)
  try:
    model = open_model(path, int8=int8, backend=backend)
    app = build_app(model, settings)
    serving = app.state.serving
    server = _Server(uvicorn.Config(app, log_config=None, log_level="warning",
                                    access_log=False, lifespan="on",
                                    timeout_graceful_shutdown=None))
    serving.on_failure = lambda message: setattr(server, "should_exit", True)
    bound = sock.getsockname()
    log.info("flaxbert serve: %s head of %s on http://%s:%d (%s%s, max length %d, batches "
             "up to %d; compiling %d shapes before /ping turns 200)", serving.head, path, host,
             bound[1], serving.backend, " int8" if model.manifest.get("int8") else "",
             serving.max_length, settings.max_batch_size, serving.batcher.shapes)
    server.run(sockets=[sock])
  finally:
    sock.close()
  if serving.batcher.failure:
    raise FlaxbertError(serving.batcher.failure)
  log.info("flaxbert serve: stopped")
