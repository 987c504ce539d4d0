"""The SageMaker container contract of the `serve` console script (flaxbert/serve/container.py)
and of the Dockerfile, without docker (no daemon here): the script setup.cfg declares is run as
the image's ENTRYPOINT runs it (`docker run IMAGE serve`), with the model given by environment
as SageMaker mounts it; /ping, /invocations, SIGTERM and a missing model are checked on it."""

import configparser
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from flaxbert import bundle as bundle_lib
from flaxbert.errors import FlaxbertError
from flaxbert.inference.embed import sentence_embeddings
from flaxbert.inference.serving import export_serving
from flaxbert.models.factory import build_model
from flaxbert.serve import container
from conftest import REPO


def console_scripts() -> dict:
  """setup.cfg's console scripts: {name: "module:function"}."""
  config = configparser.ConfigParser()
  config.read(os.path.join(REPO, "setup.cfg"))
  lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
  return dict((part.strip() for part in line.split("=", 1)) for line in lines)


def dockerfile_instructions() -> list[tuple[str, str]]:
  """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
  with open(os.path.join(REPO, "Dockerfile"), encoding="utf-8") as f:
    text = f.read().replace("\\\n", " ")
  lines = [line.strip() for line in text.splitlines()]
  return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def entrypoint_command(*args) -> list[str]:
  """The image's ENTRYPOINT + `args`, its console script run as pip's wrapper would run it."""
  entrypoint = json.loads(dict(dockerfile_instructions())["ENTRYPOINT"])
  module, function = console_scripts()[entrypoint[0]].split(":")
  wrapper = f"import sys; from {module} import {function}; sys.exit({function}())"
  return [sys.executable, "-c", wrapper, *entrypoint[1:], *args]


def test_dockerfile_runs_the_declared_console_script_on_8080():
  instructions = dockerfile_instructions()
  found = dict(instructions)
  assert found["FROM"].split(":")[0] == "python" and found["FROM"].split(":")[1][:4] in (
      "3.11", "3.12")
  entrypoint = json.loads(found["ENTRYPOINT"])   # exec form: the server gets SIGTERM itself
  assert console_scripts()[entrypoint[0]] == "flaxbert.serve.container:main"
  assert "8080" in found["EXPOSE"].split() and container.DEFAULT_PORT == 8080
  assert any(name == "RUN" and 'pip install ".[serve]"' in args for name, args in instructions)
  serve_extra = configparser.ConfigParser()
  serve_extra.read(os.path.join(REPO, "setup.cfg"))
  assert serve_extra["options.extras_require"]["serve"].split()   # what the image installs
  users = [args for name, args in instructions if name == "USER"]
  assert users and users[-1] not in ("root", "0")
  with open(os.path.join(REPO, ".dockerignore"), encoding="utf-8") as f:
    ignored = f.read().split()
  assert {"runs/", ".venv*", ".pytest_cache"} <= set(ignored)


def test_sagemaker_arguments_and_environment_make_the_serve_command(tmp_path):
  model = str(tmp_path)
  # `docker run IMAGE serve`: the word SageMaker passes is dropped; SageMaker's defaults.
  argv = container.serve_argv(["serve"], {"SM_MODEL_DIR": model})
  assert argv == ["serve", model, "--host", "0.0.0.0", "--port", "8080"]
  environ = {"FLAXBERT_MODEL_DIR": model, "SM_MODEL_DIR": "/elsewhere",
             "SAGEMAKER_BIND_TO_PORT": "9001", "FLAXBERT_PORT": "9002",
             "FLAXBERT_MAX_BATCH_SIZE": "4", "FLAXBERT_MAX_WAIT_MS": "2.5",
             "FLAXBERT_INT8": "true", "FLAXBERT_REJECT_LONG": "0"}
  assert container.serve_argv([], environ) == [
      "serve", model, "--host", "0.0.0.0", "--port", "9001", "--max-batch-size", "4",
      "--max-wait-ms", "2.5", "--int8"]
  # A directory argument wins over the environment; options after it go to `flaxbert serve`.
  assert container.serve_argv(["serve", model, "--max-batch-size", "1"],
                              {"SM_MODEL_DIR": "/elsewhere"}) == [
      "serve", model, "--host", "0.0.0.0", "--port", "8080", "--max-batch-size", "1"]
  assert container.unused_settings({"SAGEMAKER_MODEL_SERVER_WORKERS": "4"}) == [
      "SAGEMAKER_MODEL_SERVER_WORKERS=4 is not used: one process serves, its one model thread "
      "batching the requests of every connection"]
  for bad, words in (({"SM_MODEL_DIR": str(tmp_path / "absent")}, "SM_MODEL_DIR) does not"),
                     ({"FLAXBERT_MODEL_DIR": model, "FLAXBERT_MAX_QUEUE": "many"},
                      "FLAXBERT_MAX_QUEUE='many' is not a whole number"),
                     ({"FLAXBERT_MODEL_DIR": model, "SAGEMAKER_BIND_TO_PORT": "70000"},
                      "not a TCP port"),
                     ({"FLAXBERT_MODEL_DIR": model, "FLAXBERT_INT8": "maybe"}, "FLAXBERT_INT8")):
    with pytest.raises(FlaxbertError, match=words.replace("(", r"\(").replace(")", r"\)")):
      container.serve_argv([], bad)


def test_missing_model_directory_is_one_line(tmp_path):
  missing = str(tmp_path / "opt" / "ml" / "model")
  env = dict(os.environ, SM_MODEL_DIR=missing)
  proc = subprocess.run(entrypoint_command("serve"), capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f"flaxbert: error: model directory {missing} (from SM_MODEL_DIR) does not exist: mount "
      "the model at /opt/ml/model or name it with FLAXBERT_MODEL_DIR, SM_MODEL_DIR or "
      "`serve DIR`"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def mounted_model(tiny_hf, tmp_path_factory):
  """(serving export of an encoder bundle, that bundle): what SageMaker unpacks at
  /opt/ml/model. The encoder is tiny_hf's; the export is as `flaxbert export --serving`
  writes it."""
  base = bundle_lib.load(tiny_hf)
  model = build_model(base.config, "encoder", None)   # the encoder is all its parameters
  bundle = bundle_lib.Bundle(model, {"bert": base.params["bert"]}, base.tokenizer, base.config,
                             "encoder", None)
  path = str(tmp_path_factory.mktemp("opt_ml") / "model")
  export_serving(bundle, path)
  return path, bundle


def wait_for_ping(url: str, proc, timeout: float = 180) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert proc.poll() is None, "the server exited before /ping answered 200"
    try:
      if httpx.get(url + "/ping", timeout=5).status_code == 200:
        return
    except httpx.TransportError:   # not listening yet
      pass
    time.sleep(0.2)
  raise AssertionError(f"/ping did not answer 200 in {timeout} s")


def test_sagemaker_run_serves_the_mounted_model_and_stops_on_sigterm(mounted_model, tmp_path):
  path, bundle = mounted_model
  port = free_port()
  env = dict(os.environ, SM_MODEL_DIR=path, SAGEMAKER_BIND_TO_PORT=str(port),
             FLAXBERT_MAX_BATCH_SIZE="2", FLAXBERT_MAX_LENGTH="16", FLAXBERT_MAX_INPUTS="2")
  env.pop("FLAXBERT_MODEL_DIR", None)
  url = f"http://127.0.0.1:{port}"
  with open(tmp_path / "server.log", "w+") as log:
    proc = subprocess.Popen(entrypoint_command("serve"), stdout=log, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=REPO)
    try:
      wait_for_ping(url, proc)
      texts = ["the mounted model answers", ["a pair of", "texts"]]
      answer = httpx.post(url + "/invocations", json={"inputs": texts}, timeout=60)
      assert answer.status_code == 200, answer.text
      served = np.asarray(answer.json()["outputs"], np.float32)
      offline = sentence_embeddings(bundle, texts, max_length=16)
      assert served.shape == offline.shape == (2, bundle.config.hidden_size)
      np.testing.assert_allclose(served, offline, atol=1e-5)
      # The environment's settings reached the server: a third input is past FLAXBERT_MAX_INPUTS.
      refused = httpx.post(url + "/invocations", json={"inputs": ["a", "b", "c"]}, timeout=60)
      assert refused.status_code == 413 and refused.json()["limit"] == "max_inputs"
      proc.send_signal(signal.SIGTERM)
      assert proc.wait(timeout=60) == 0
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.seek(0)
    output = log.read()
  assert output.startswith(f"serve: flaxbert serve {path} --host 0.0.0.0 --port {port} "
                           "--max-batch-size 2 --max-inputs 2 --max-length 16\n"), output
  assert f"on http://0.0.0.0:{port}" in output, output   # all interfaces: docker publishes it
  assert "Traceback" not in output, output


def test_a_directory_that_is_no_model_is_one_line(tmp_path):
  empty = tmp_path / "model"
  empty.mkdir()
  env = dict(os.environ, FLAXBERT_MODEL_DIR=str(empty), SAGEMAKER_BIND_TO_PORT=str(free_port()))
  proc = subprocess.run(entrypoint_command("serve"), capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"flaxbert: error: {empty}"), proc.stderr
