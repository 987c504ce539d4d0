"""The run lifecycle loses nothing: each fault the skeleton (training/run.py) promises to
survive, tried as a user would, ends in one line and exit 2 (or a correct resume), with the
workdir unchanged."""

import errno
import fcntl
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest

from conftest import SHARED_DATA, call_cli, snapshot
from test_pretrain import TINY, corpus_and_tokenizer, launcher_args, losses  # noqa: F401

from flaxbert.bundle import store


def one_error_line(err):
  lines = [l for l in err.strip().splitlines() if l.startswith("flaxbert: error:")]
  assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
  return lines[0]


def main_in_process(args, capsys=None):
  """(rc, stderr) of the `flaxbert` command run in this process."""
  rc, _, err = call_cli(*args)
  return rc, err


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, corpus_and_tokenizer):
  """A 4-step pretraining run (checkpoint at step 4), made once for the cases below."""
  workdir = tmp_path_factory.mktemp("lifecycle") / "run"
  rc, _, err = call_cli(*launcher_args(workdir, corpus_and_tokenizer, 4, "--sync-checkpoints"))
  assert rc == 0, err
  return workdir


def test_other_settings_other_kind_and_a_second_run_change_nothing(trained_workdir,
                                                                   corpus_and_tokenizer,
                                                                   capsys):
  before = snapshot(trained_workdir)
  args = launcher_args(trained_workdir, corpus_and_tokenizer, 4, "--sync-checkpoints")
  # Another batch size, another model shape.
  for extra, words in ((["--batch-size", "16"], "batch_size 8 -> 16"),
                       (["--set", "num_layers=1"], "num_layers")):
    rc, err = main_in_process(args + extra, capsys)
    line = one_error_line(err)
    assert rc == 2 and "other settings" in line and words in line, line
  # Another kind of run on the same workdir (a seq2seq fine-tune).
  rc, err = main_in_process(["finetune", "seq2seq", "--train", "x.tsv", "--dev", "y.tsv",
                             "--workdir", trained_workdir], capsys)
  line = one_error_line(err)
  assert rc == 2 and "holds a pretrain run" in line, line
  # A fine-tune pointed at the pretraining workdir, starting from that run's own bundle.
  sentiment = os.path.join(SHARED_DATA, "sentiment")
  rc, err = main_in_process(["finetune", "classify", "--train",
                             os.path.join(sentiment, "train.tsv"), "--dev",
                             os.path.join(sentiment, "dev.tsv"), "--init",
                             trained_workdir / "bundle", "--workdir", trained_workdir], capsys)
  line = one_error_line(err)
  assert rc == 2 and "holds a pretrain run, not a finetune-classify run" in line, line
  # A second run while one holds the workdir's lock.
  with open(trained_workdir / ".lock", "a+") as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.seek(0)
    held.truncate()
    held.write("pid 4242")
    held.flush()
    rc, err = main_in_process(args, capsys)
    fcntl.flock(held, fcntl.LOCK_UN)
  line = one_error_line(err)
  assert rc == 2 and "in use by another flaxbert run (pid 4242)" in line, line
  after = snapshot(trained_workdir)
  after.pop(".lock"), before.pop(".lock")
  assert after == before


@pytest.mark.parametrize("failure", ["oserror", "wrapped"])
def test_io_error_while_restoring_moves_nothing(trained_workdir, corpus_and_tokenizer,
                                                capsys, monkeypatch, failure):
  """EIO while reading a good checkpoint: one line; the checkpoint is neither deleted nor
  moved aside, and the run does not start again from step 0."""
  before = snapshot(trained_workdir)

  def broken_restore(self, step, *args, **kwargs):
    error = OSError(errno.EIO, os.strerror(errno.EIO), f"{self.directory}/{step}")
    if failure == "wrapped":   # as TensorStore reports it
      raise ValueError(f"Error reading {step}: {os.strerror(errno.EIO)} [source]") from None
    raise error

  monkeypatch.setattr(ocp.CheckpointManager, "restore", broken_restore)
  rc, err = main_in_process(launcher_args(trained_workdir, corpus_and_tokenizer, 4,
                                          "--sync-checkpoints"), capsys)
  line = one_error_line(err)
  assert rc == 2 and "cannot read checkpoint 4" in line and "Input/output error" in line, line
  after = snapshot(trained_workdir)
  after.pop(".lock"), before.pop(".lock")
  assert after == before
  assert not [n for n in os.listdir(trained_workdir / "checkpoints") if "unreadable" in n]


def test_replacing_a_bundle_survives_sigkill_at_any_moment(tmp_path):
  """A process rewriting `best/` again and again is SIGKILLed at random moments: `best/`
  is always there and whole (old or new), never half-written or missing."""
  target = tmp_path / "best"
  target.mkdir()
  (target / "a").write_text("0" * 1000)
  (target / "b").write_text("0" * 1000)
  script = (
      "import os, sys\n"
      "from flaxbert.bundle import store\n"
      "for i in range(1, 10**6):\n"
      "  with store.replacing_directory(sys.argv[1]) as tmp:\n"
      "    for name in 'ab':\n"
      "      with open(os.path.join(tmp, name), 'w') as f:\n"
      "        f.write(str(i % 10) * 1000)\n")
  for trial in range(12):
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)])
    time.sleep(0.6 + 0.05 * trial)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store.recover_replaced(str(target))
    contents = {name: (target / name).read_text() for name in os.listdir(target)}
    assert set(contents) == {"a", "b"}, contents.keys()
    assert contents["a"] == contents["b"] and len(set(contents["a"])) == 1


def test_convert_and_new_outputs_never_delete_a_users_directory(tmp_path):
  partial = tmp_path / "out.partial"
  partial.mkdir()
  (partial / "mine.txt").write_text("user data")
  with store.new_directory(str(tmp_path / "out")) as tmp:
    open(os.path.join(tmp, "x"), "w").close()
  assert (partial / "mine.txt").read_text() == "user data"
  assert os.listdir(tmp_path / "out") == ["x"]
  from flaxbert.errors import FlaxbertError
  with pytest.raises(FlaxbertError, match="already exists and is not empty"):
    with store.new_directory(str(tmp_path / "out")):
      pass
  assert os.listdir(tmp_path / "out") == ["x"]


def test_full_disk_and_read_only_workdir(tmp_path, corpus_and_tokenizer):
  """On a small tmpfs (a private mount namespace): a full disk while saving, then a
  read-only workdir, each one line naming the path; the good checkpoint stays and the run
  resumes from it once there is room."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  cli = f"{shlex.quote(sys.executable)} -m flaxbert.cli"

  def launch(steps):
    return " ".join([cli, *map(shlex.quote, map(str, launcher_args(
        workdir, corpus_and_tokenizer, steps, "--sync-checkpoints")))])

  w = shlex.quote(str(workdir))
  script = f"""
    mount -t tmpfs -o size=16m none {w} || exit 99
    {launch(4)} >/dev/null 2>&1; echo "rc_first=$?"
    dd if=/dev/zero of={w}/filler bs=64k 2>/dev/null; truncate -s -96K {w}/filler
    {launch(8)}; echo "rc_full=$?"
    rm {w}/filler
    mount -o remount,ro {w}
    {launch(8)}; echo "rc_readonly=$?"
    mount -o remount,rw {w}
    ls {w}/checkpoints | tr '\\n' ' '; echo
    {launch(8)} 2>&1 | grep -o 'resuming from step [0-9]*'; echo "rc_resumed=$?"
    ls {w}/checkpoints | tr '\\n' ' '; echo
  """
  proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True,
                        text=True, timeout=900)
  out, err = proc.stdout, proc.stderr
  assert proc.returncode != 99, err
  assert "rc_first=0" in out, (out, err[-3000:])
  assert "rc_full=2" in out and "rc_readonly=2" in out, (out, err[-3000:])
  errors = [l for l in err.splitlines() if l.startswith("flaxbert: error:")]
  assert len(errors) == 2 and "Traceback" not in err, err[-3000:]
  assert "No space left on device" in errors[0] and str(workdir) in errors[0], errors[0]
  assert "Read-only file system" in errors[1] and str(workdir) in errors[1], errors[1]
  listing = [[n for n in l.split() if n.isdigit()] for l in out.splitlines()
             if l and not l.startswith(("rc_", "resuming"))]
  assert listing[0] == ["4"], out   # the good checkpoint, and no step 8
  assert "resuming from step 4" in out and listing[1] == ["4", "8"], out


def _two_processes(args_for, timeout=600):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "flaxbert.cli", *map(str, args_for(i)),
       "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu")) for i in range(2)]
  start = time.time()
  results = [p.communicate(timeout=timeout) for p in procs]
  return procs, results, time.time() - start


def test_two_processes_on_a_fresh_workdir_default_corpus(tmp_path):
  """Case 11 as a pod runs it: two processes, one fresh workdir, the embedded corpus and a
  tokenizer trained by the run; process 0 prepares, process 1 waits, both finish."""
  workdir = tmp_path / "pod"
  args = ["pretrain", "--workdir", workdir, "--steps", "4", "--batch-size", "8",
          "--seq-len", "32", "--vocab-size", "400", "--log-every", "1", "--eval-every", "4",
          "--eval-batches", "1", "--checkpoint-every", "4", "--quiet", *TINY]
  procs, results, _ = _two_processes(lambda i: args)
  for p, (_, err) in zip(procs, results):
    assert p.returncode == 0, err[-3000:]
  assert [r["step"] for r in losses(workdir)] == [1, 2, 3, 4]
  assert os.path.isdir(workdir / "bundle" / "params")


def test_a_failing_process_stops_the_other_within_seconds(tmp_path, corpus_and_tokenizer):
  """Process 1 runs other settings than process 0: it stops with one line, and process 0,
  waiting for it at a barrier, stops within seconds with one line naming it."""
  workdir = tmp_path / "pod"
  procs, results, seconds = _two_processes(
      lambda i: launcher_args(workdir, corpus_and_tokenizer, 4, *(["--batch-size", "16"] * i)))
  lines = [one_error_line(err) for _, err in results]
  assert [p.returncode for p in procs] == [2, 2], results
  assert "other settings than process 0" in lines[1], lines
  assert "process 1" in lines[0] and "other settings" in lines[0], lines
  print(f"both processes stopped {seconds:.1f} s after starting")
  assert seconds < 60, seconds


class _Position:
  """A data iterator's checkpointable position, as RunCheckpoints saves it."""

  def __init__(self, at=0):
    self.at = at

  def get_state(self):
    return {"at": self.at}

  def set_state(self, state):
    self.at = state["at"]


def test_a_checkpoint_of_other_shapes_is_an_error_not_damage(tmp_path):
  """Restoring into other shapes (other settings) names the parameter and both shapes and
  moves nothing; the same shapes restore the saved values and position."""
  import jax
  import jax.numpy as jnp
  from flaxbert.errors import FlaxbertError
  from flaxbert.training.checkpoint import RunCheckpoints
  from flaxbert.training.state import TrainState

  def state(shape, value):
    return TrainState(step=jnp.asarray(3, jnp.int32),
                      params={"dense": {"kernel": jnp.full(shape, value, jnp.float32)}},
                      opt_state=(), rng=jnp.zeros((2,), jnp.uint32))

  directory = str(tmp_path / "checkpoints")
  saver = RunCheckpoints(directory, async_save=False)
  saver.save(3, state((2, 3), 1.5), _Position(7))
  saver.close()
  for _ in range(2):   # a second attempt finds the checkpoint where it was
    with pytest.raises(FlaxbertError, match=r"dense/kernel has shape \(2, 3\) but this "
                       r"run's is \(2, 4\)"):
      RunCheckpoints(directory).restore(
          jax.eval_shape(lambda: state((2, 4), 0.0)), _Position())
    assert sorted(os.listdir(directory)) == ["3"]
  position = _Position()
  step, restored = RunCheckpoints(directory).restore(
      jax.eval_shape(lambda: state((2, 3), 0.0)), position)
  assert step == 3 and position.at == 7
  assert float(restored.params["dense"]["kernel"][1, 2]) == 1.5
