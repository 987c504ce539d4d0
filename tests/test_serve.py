"""`flaxbert serve`: real servers (`python -m flaxbert serve` processes) answered by a real HTTP
client. Concurrent requests are batched and every answer equals offline `flaxbert predict`'s;
an overload gets 503 + Retry-After and the server keeps serving; bad requests get their
status and a JSON error; /metrics parses; SIGTERM with requests in flight completes them and
exits 0. In-process (the same application, no process): ner spans and qa answers equal
flaxbert.pipeline's, embeddings and fill-mask candidates `embed`'s and `fill-mask`'s; long
texts are cut or rejected; /ping is 503 until every shape is compiled.

Two server processes, started together once: one over a classify bundle (exported on the
fly; dynamic batching up to 8 rows), one over that bundle's serving export with
--max-batch-size 1 (no dynamic batching), which the SIGTERM test ends.
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, SHARED_DATA, call_cli
from flaxbert import bundle as bundle_lib
from flaxbert.inference import embed, fill_mask
from flaxbert.inference.pipeline import pipeline
from flaxbert.inference.serving import export_serving
from flaxbert.models.factory import build_model
from flaxbert.serve.app import build_app
from flaxbert.tasks import classify

LABELS = ["negative", "neutral", "positive"]
MAX_LENGTH = 32


def _rows(name, n):
  table = classify.read_table(os.path.join(SHARED_DATA, name), need_label=True)
  a, b = table.texts
  return list(zip(a[:n], b[:n] if b is not None else [None] * n))


def _task_bundle(base, path, head, labels, settings, centre_on=None):
  """`base` with a random head (large weights, so that answers vary from input to input;
  drawn with numpy: initialising the model, even under jit, takes seconds) and a
  finetune.json, as a bundle at `path`. A random model's pooled vectors differ little from
  text to text: `centre_on` (rows) sets a classifier's bias to cancel their mean, so that
  the labels differ too."""
  outputs = len(labels) if labels else 2
  rng = np.random.default_rng(0)
  hidden = base.config.hidden_size
  dense = {"kernel": rng.normal(0, 0.5, (hidden, outputs)).astype(np.float32),
           "bias": rng.normal(0, 0.1, outputs).astype(np.float32)}
  if centre_on:
    rows = embed.encode_rows(base.tokenizer, centre_on, settings["max_seq_length"])
    _, pooled = embed.embed_arrays(base, *rows, 64, show_progress=False)
    dense["bias"] = -(pooled.mean(axis=0) @ dense["kernel"])
  params = {"bert": base.params["bert"],
            "qa_outputs" if head == "span_qa" else "classifier": {"dense": dense}}
  bundle = bundle_lib.Bundle(build_model(base.config, head, len(labels) if labels else None),
                             params, base.tokenizer, base.config, head, labels)
  bundle_lib.replace(str(path), bundle, files={"finetune.json": settings})
  return str(path)


@pytest.fixture(scope="module")
def base(tiny_hf):
  return bundle_lib.load(tiny_hf)   # a pretraining (MLM) head


@pytest.fixture(scope="module")
def classify_bundle(base, tmp_path_factory):
  return _task_bundle(base, tmp_path_factory.mktemp("serve") / "classify", "classification",
                      LABELS, {"task": "classify", "max_seq_length": MAX_LENGTH},
                      centre_on=_rows("sentiment/dev.tsv", 40) + _rows("wsd_pairs/dev.tsv", 20))


class Server:
  """`python -m flaxbert serve PATH --port 0 ...` in a subprocess."""

  def __init__(self, path, *flags):
    self.log = open(os.path.join(os.path.dirname(path), f"serve-{os.getpid()}-{id(self)}.log"),
                    "w+")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    self.proc = subprocess.Popen([sys.executable, "-m", "flaxbert", "serve", path, "--port",
                                  "0", *flags], stdout=self.log, stderr=subprocess.STDOUT,
                                 env=env, cwd=REPO)
    self.url = None

  def output(self):
    self.log.seek(0)
    return self.log.read()

  def wait_ready(self, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      assert self.proc.poll() is None, self.output()
      if self.url is None and "on http://" in self.output():
        self.url = "http://" + self.output().split("on http://")[1].split()[0]
      if self.url is not None:
        try:
          if httpx.get(self.url + "/ping", timeout=5).status_code == 200:
            return self
        except httpx.TransportError:
          pass
      time.sleep(0.2)
    raise AssertionError(f"server not ready in {timeout} s:\n{self.output()}")

  def stop(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    self.log.close()


@pytest.fixture(scope="module")
def export(classify_bundle):
  """The classify bundle's serving export."""
  path = os.path.join(os.path.dirname(classify_bundle), "export")
  rc, _, err = call_cli("export", classify_bundle, "--serving", "--out", path)
  assert rc == 0, err
  return path


@pytest.fixture(scope="module")
def servers(classify_bundle, export):
  """(batching server over the bundle, --max-batch-size 1 server over its export)."""
  batching = Server(classify_bundle, "--max-batch-size", "8", "--max-queue", "64")
  single = Server(export, "--max-batch-size", "1")
  try:
    yield batching.wait_ready(), single.wait_ready()
  finally:
    batching.stop()
    single.stop()


@pytest.fixture(scope="module")
def offline(classify_bundle, tmp_path_factory):
  """{input (a text or a (text_a, text_b) pair): (label, {label: probability})} as
  `flaxbert predict` writes them, for 40 sentences and 20 sentence pairs."""
  root = tmp_path_factory.mktemp("offline")
  answers = {}
  for name, n in (("sentiment/dev.tsv", 40), ("wsd_pairs/dev.tsv", 20)):
    rows = _rows(name, n)
    source, output = root / f"{n}.tsv", root / f"{n}.pred.tsv"
    source.write_text("".join("\t".join(t for t in row if t is not None) + "\tx\n"
                              for row in rows), encoding="utf-8")
    rc, _, err = call_cli("predict", classify_bundle, "--task", "classify", "--input", source,
                          "--output", output, "--quiet")
    assert rc == 0, err
    table = classify.read_table(str(output), need_label=True)
    for i, row in enumerate(rows):
      key = row[0] if row[1] is None else tuple(row)
      answers[key] = (table.column("prediction")[i],
                      {label: float(table.column(f"prob_{label}")[i]) for label in LABELS})
  return answers


async def _post(client, url, items, **kwargs):
  return await client.post(url + "/invocations", json={"inputs": items}, **kwargs)


def _check_answers(items, outputs, offline):
  assert len(outputs) == len(items)
  for item, got in zip(items, outputs):
    label, probabilities = offline[item if isinstance(item, str) else tuple(item)]
    assert got["label"] == label and got["score"] == got["scores"][label]
    np.testing.assert_allclose([got["scores"][k] for k in LABELS],
                               [probabilities[k] for k in LABELS], rtol=2e-5, atol=1e-7)


def _requests(offline, count, seed):
  """`count` requests of 1 to 3 inputs drawn from the offline texts and pairs."""
  keys = list(offline)
  rng = np.random.default_rng(seed)
  return [[keys[i] if isinstance(keys[i], str) else list(keys[i])
           for i in rng.choice(len(keys), rng.integers(1, 4))] for _ in range(count)]


def test_concurrent_requests_equal_offline_predict(servers, offline):
  batching, _ = servers
  requests = _requests(offline, 240, seed=0)

  async def run():
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=60) as client:
      async def one(items):
        async with limit:
          return await _post(client, batching.url, items)
      return await asyncio.gather(*(one(items) for items in requests))

  responses = asyncio.run(run())
  assert [r.status_code for r in responses] == [200] * len(requests)
  for items, response in zip(requests, responses):
    _check_answers(items, response.json()["outputs"], offline)
  probabilities = {tuple(v[1].values()) for v in offline.values()}
  assert len(probabilities) > 50 and len({v[0] for v in offline.values()}) > 1, \
      "a weak test: the texts get the same answers"
  metrics = _metrics(batching.url)
  # Had no two requests shared a model call, there would be a call per request at least.
  assert metrics["flaxbert_batch_rows"]["count"] < len(requests)
  # Batch sizes 1, 2, 4, 8 x buckets 16, 32, all compiled before /ping said ready: none since.
  assert metrics["flaxbert_compiled_shapes"]["value"] == 8
  assert "POST /invocations 200" in batching.output()   # the access log
  # On a CPU a bundle with an ONNX form is served by onnxruntime, an export without one by XLA.
  assert "(onnx, max length" in batching.output()
  assert "(xla, max length" in servers[1].output()
  # {"instances": [...]} is {"inputs": [...]}'s other name
  items = requests[0]
  response = httpx.post(batching.url + "/invocations", json={"instances": items})
  _check_answers(items, response.json()["outputs"], offline)


def _metrics(url):
  text = httpx.get(url + "/metrics").text
  out = {}
  for family in text_string_to_metric_families(text):
    for sample in family.samples:
      if sample.name.endswith("_count"):
        out.setdefault(family.name, {})["count"] = sample.value
      elif not sample.labels:
        out.setdefault(family.name, {})["value"] = sample.value
      out.setdefault(family.name, {}).setdefault("samples", []).append(sample)
  return out


def test_overload_gets_503_with_retry_after_and_the_server_stays_up(servers, offline):
  batching, _ = servers
  texts = [k for k in offline if isinstance(k, str)]
  big = (texts * 6)[:200]   # 200 rows: admitted only into an empty queue (--max-queue 64)

  async def run():
    async with httpx.AsyncClient(timeout=60) as client:
      return await asyncio.gather(*(_post(client, batching.url, big) for _ in range(24)))

  responses = asyncio.run(run())
  refused = [r for r in responses if r.status_code == 503]
  assert refused and len(refused) < len(responses), [r.status_code for r in responses]
  for r in refused:
    assert r.headers["retry-after"] == "1"
    assert "queue is full" in r.json()["error"] and r.json()["limit"] == "max_queue"
  for r in responses:
    if r.status_code == 200:
      _check_answers(big, r.json()["outputs"], offline)
  assert httpx.get(batching.url + "/ping").status_code == 200
  response = httpx.post(batching.url + "/invocations", json={"inputs": texts[:3]})
  _check_answers(texts[:3], response.json()["outputs"], offline)
  errors = {s.labels["reason"]: s.value
            for s in _metrics(batching.url)["flaxbert_request_errors"]["samples"]
            if s.name.endswith("_total")}
  assert errors["queue_full"] == len(refused)


BAD_REQUESTS = [
    # (what, method, path, body, headers, status, words of the error)
    ("malformed JSON", "POST", "/invocations", b'{"inputs": [', None, 400, "malformed JSON"),
    ("not UTF-8", "POST", "/invocations", b'{"inputs": ["\xff"]}', None, 400, "malformed"),
    ("no inputs field", "POST", "/invocations", b'{"texts": ["a"]}', None, 400, "inputs"),
    ("an extra field", "POST", "/invocations", b'{"inputs": ["a"], "x": 1}', None, 400,
     "unknown field 'x'"),
    ("inputs not a list", "POST", "/invocations", b'{"inputs": "a"}', None, 400, "list"),
    ("empty inputs", "POST", "/invocations", b'{"inputs": []}', None, 400, "non-empty"),
    ("a number as input", "POST", "/invocations", b'{"inputs": ["a", 3]}', None, 400,
     "input 1: expected a text"),
    ("a triple as input", "POST", "/invocations", b'{"inputs": [["a", "b", "c"]]}', None, 400,
     "input 0"),
    ("too many inputs", "POST", "/invocations", b'{"inputs": [' + b'"a",' * 256 + b'"a"]}',
     None, 413, "max_inputs 256"),
    ("too long a text", "POST", "/invocations", b'{"inputs": ["' + b"a" * 20001 + b'"]}',
     None, 413, "max_chars 20000"),
    ("too large a body", "POST", "/invocations", b'{"inputs": ["' + b" " * (4 << 20) + b'"]}',
     None, 413, "max_body_bytes"),
    ("form content type", "POST", "/invocations", b'{"inputs": ["a"]}',
     {"content-type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ("no content type", "POST", "/invocations", b'{"inputs": ["a"]}', {"content-type": ""},
     415, "application/json"),
    ("unknown path", "GET", "/predict", None, None, 404, "Not Found"),
    ("GET /invocations", "GET", "/invocations", None, None, 405, "Method Not Allowed"),
    ("POST /ping", "POST", "/ping", b"{}", None, 405, "Method Not Allowed"),
]


def test_bad_requests_get_their_status_and_a_json_error(servers):
  batching, _ = servers
  with httpx.Client(base_url=batching.url, timeout=30) as client:
    for what, method, path, body, headers, status, words in BAD_REQUESTS:
      headers = {"content-type": "application/json", **(headers or {})}
      response = client.request(method, path, content=body, headers=headers)
      assert response.status_code == status, (what, response.text[:200])
      assert words in response.json()["error"], (what, response.json())
    assert client.get("/ping").status_code == 200


def test_long_texts_are_cut_or_rejected(export, offline):
  """Past --max-length tokens a text is cut (as predict cuts it), or with --reject-long
  refused with 400 naming the limit; in-process, through the same application."""
  long_text = " ".join(k for k in offline if isinstance(k, str))
  cut = _in_process(build_app(export, max_batch_size=1),
                    [[long_text], [long_text[:40]]])
  assert [r.status_code for r in cut] == [200, 200]
  rejecting = build_app(export, max_batch_size=1, reject_long=True)
  short, long = _in_process(rejecting, [[long_text[:40]], ["a", long_text]])
  assert short.status_code == 200
  assert long.status_code == 400 and long.json()["limit"] == "max_length"
  assert long.json()["error"].startswith("input 1: ") and f"the {MAX_LENGTH} the model" in \
      long.json()["error"]


def test_ping_and_invocations_answer_503_until_compiled(export):
  app = build_app(export, max_batch_size=1)   # its batcher not started: nothing compiled

  async def run():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
      return await client.get("/ping"), await _post(client, "", ["a"])

  ping, invocation = asyncio.run(run())
  assert ping.status_code == 503 and ping.json() == {"status": "compiling"}
  assert invocation.status_code == 503 and "compiling" in invocation.json()["error"]
  assert ping.headers["retry-after"] == invocation.headers["retry-after"] == "1"


def test_int8_bundle_is_served_by_onnxruntime_or_xla_close_to_float(classify_bundle, offline):
  """--int8 on a bundle: onnxruntime's dynamic int8 by default on a CPU, XLA's int8 module
  with --backend xla; both answer within int8 rounding of the float32 offline predictions."""
  texts = [k for k in offline if isinstance(k, str)][:6]
  for backend in ("auto", "xla"):
    app = build_app(classify_bundle, int8=True, backend=backend, max_batch_size=1)
    assert app.state.serving.backend == ("onnx" if backend == "auto" else "xla")
    assert app.state.serving.model.manifest["int8"]
    (response,) = _in_process(app, [texts])
    for text, got in zip(texts, response.json()["outputs"]):
      np.testing.assert_allclose([got["scores"][k] for k in LABELS],
                                 [offline[text][1][k] for k in LABELS], atol=0.03)


def _in_process(app, requests):
  """Answers of an application run in this process (its batcher started and compiled)."""
  serving = app.state.serving
  serving.batcher.start()
  assert serving.batcher.ready.wait(120), serving.batcher.failure

  async def run():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
      return await asyncio.gather(*(_post(client, "", items) for items in requests))

  try:
    return asyncio.run(run())
  finally:
    serving.batcher.close()
    assert len(serving.compiled.shapes) == serving.batcher.shapes   # no compile after ready


def test_embeddings_and_fill_mask_equal_offline(base, tmp_path):
  encoder = bundle_lib.Bundle(build_model(base.config, "encoder"), {"bert": base.params["bert"]},
                              base.tokenizer, base.config, "encoder",
                              sentence_embedding={"pooling": "cls", "normalize": True})
  texts = ["ab cd ef", ["gh ij", "kl mn op"], "qr st uv wx yz " * 3]
  export_serving(encoder, str(tmp_path / "encoder"))
  # max length 16: one bucket, so two compiled shapes (batch 1 and 2)
  (response,) = _in_process(build_app(str(tmp_path / "encoder"), max_batch_size=2,
                                      max_length=16), [texts])
  want = embed.sentence_embeddings(encoder, [t if isinstance(t, str) else tuple(t)
                                             for t in texts], max_length=16)
  np.testing.assert_allclose(response.json()["outputs"], want, atol=2e-6)
  np.testing.assert_allclose(np.linalg.norm(want, axis=1), 1.0, rtol=1e-5)   # cls, normalized

  masked = ["ab [MASK] cd", "[MASK] ef gh [MASK] .", "ij kl"]
  export_serving(base, str(tmp_path / "mlm"))
  good, bad = _in_process(build_app(str(tmp_path / "mlm"), max_batch_size=2, top_k=3,
                                    max_length=16), [masked[:2], masked])
  want = fill_mask.fill_mask(base, masked[:2], top_k=3, max_length=16)
  got = good.json()["outputs"]
  assert [[[c["token"] for c in m] for m in text] for text in got] == \
      [[[c["token"] for c in m] for m in text] for text in want]
  assert [[[c["sequence"] for c in m] for m in text] for text in got] == \
      [[[c["sequence"] for c in m] for m in text] for text in want]
  np.testing.assert_allclose([c["score"] for text in got for m in text for c in m],
                             [c["score"] for text in want for m in text for c in m], atol=1e-6)
  assert bad.status_code == 400 and "has no [MASK]" in bad.json()["error"]


def test_ner_and_qa_answers_equal_the_offline_pipeline(base, tmp_path):
  """Served from bundles (exported on the fly with their finetune.json): entity spans, and qa
  answers over contexts long enough for several windows each (rows of one request that come
  back from different batches), equal flaxbert.pipeline's (which equal predict's)."""
  ner_path = _task_bundle(base, tmp_path / "ner", "tagging", ["O", "B-x", "I-x", "B-y"],
                          {"task": "ner", "max_seq_length": 32})
  qa_path = _task_bundle(base, tmp_path / "qa", "span_qa", None,
                         {"task": "qa", "max_seq_length": 32, "doc_stride": 8,
                          "max_query_length": 6, "n_best": 5})
  texts = [" ".join(t.split()[:12]) for t, _ in _rows("sentiment/dev.tsv", 8)]
  questions = [[texts[i], " ".join(texts[i + 1:i + 4])] for i in range(4)]
  got = {}
  for path, inputs, task in ((ner_path, texts, "ner"), (qa_path, questions, "qa")):
    app = build_app(path, max_batch_size=1)   # a bundle: exported on the fly
    (response,) = _in_process(app, [inputs])
    want = pipeline(task, path)([tuple(q) for q in inputs] if task == "qa" else inputs)
    got[task] = response.json()["outputs"]
    assert _rounded(got[task]) == _rounded(want), task
  assert sum(map(len, got["ner"])) > 3, "a weak test: hardly any entities"
  assert sum(bool(answer["answer"]) for answer in got["qa"]) > 1


def _rounded(value):
  """Floats to 5 significant digits, in any nesting of lists and dicts."""
  if isinstance(value, float):
    return float(f"{value:.5g}")
  if isinstance(value, dict):
    return {k: _rounded(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_rounded(v) for v in value]
  return value


def test_sigterm_completes_requests_in_flight_and_exits_0(servers, offline):
  """The --max-batch-size 1 server (one input per model call: slow enough to catch requests
  in flight) over the export: answers equal predict's, and SIGTERM drains."""
  _, single = servers
  texts = [k for k in offline if isinstance(k, str)]
  requests = [(texts * 6)[i:i + 60] for i in range(0, 240, 60)]

  async def run():
    async with httpx.AsyncClient(timeout=60) as client:
      tasks = [asyncio.ensure_future(_post(client, single.url, items)) for items in requests]
      deadline, seen = time.monotonic() + 30, []
      while time.monotonic() < deadline:   # until every request is in the server
        metrics = await client.get(single.url + "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
        seen.append(families["flaxbert_requests_in_progress"].samples[0].value)
        if seen[-1] >= len(requests):
          break
        await asyncio.sleep(0.005)
      assert seen[-1] >= len(requests), (seen, [t.done() for t in tasks])
      single.proc.send_signal(signal.SIGTERM)
      return await asyncio.gather(*tasks)

  responses = asyncio.run(run())
  assert [r.status_code for r in responses] == [200] * len(requests)
  for items, response in zip(requests, responses):
    _check_answers(items, response.json()["outputs"], offline)
  assert single.proc.wait(timeout=60) == 0, single.output()
  assert "flaxbert serve: stopped" in single.output()


def test_bad_command_lines_are_one_line_errors(classify_bundle, export, tmp_path):
  for args, words in ((["serve", str(tmp_path / "absent")], "no such serving export"),
                      (["serve", str(tmp_path)], "neither a serving export"),
                      (["serve", classify_bundle, "--max-batch-size", "0"],
                       "--max-batch-size must be positive"),
                      (["serve", export, "--int8"], "--int8 applies to a bundle"),
                      (["serve", export, "--backend", "onnx"], "no ONNX form to serve")):
    rc, _, err = call_cli(*args, "--port", "0")
    assert rc == 2 and words in err and "Traceback" not in err, err
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    rc, _, err = call_cli("serve", classify_bundle, "--port", str(taken.getsockname()[1]))
  assert rc == 2 and "cannot listen on 127.0.0.1:" in err and "in use" in err, err
