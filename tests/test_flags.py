"""Flags generated from the config dataclasses: every old spelling still parses to the same
config, one setting has one flag everywhere, --help shows defaults, identity metadata, and
`--version`. Parsing only: nothing trains."""

import dataclasses
import os
import subprocess
import sys

import pytest

from flaxbert import __version__, cli
from flaxbert.commands import finetune_classify, finetune_seq2seq, pretrain
from flaxbert.recipes import bert_pretrain, finetune, seq2seq
from flaxbert.recipes.configs import SHARED, FinetuneConfig, PretrainConfig, Seq2SeqConfig, \
    identity_fields

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = (PretrainConfig, FinetuneConfig, Seq2SeqConfig)


def parse(*argv):
  return cli.build_parser().parse_args([str(a) for a in argv])


def pretrain_config(*argv):
  return pretrain.make_config(parse("pretrain", *argv))


def finetune_config(task, *argv):
  return finetune_classify.make_config(parse("finetune", task, *argv))


def seq2seq_config(*argv):
  return finetune_seq2seq.make_config(parse("finetune", "seq2seq", *argv))


FT_REQUIRED = ("--train", "t", "--dev", "d", "--init", "m", "--workdir", "w")
S2S_REQUIRED = ("--train", "t.tsv", "--dev", "d.tsv", "--workdir", "w")


def test_recipes_use_the_config_classes():
  assert bert_pretrain.PretrainConfig is PretrainConfig
  assert finetune.FinetuneConfig is FinetuneConfig
  assert seq2seq.Seq2SeqConfig is Seq2SeqConfig


def test_every_old_pretrain_flag_parses_as_before():
  args = parse(
      "pretrain", "--workdir", "runs/base", "--model", "encdec", "--config", "bert_12_768_12",
      "--corpus", "a.txt", "b.txt", "--eval-corpus", "c.txt", "--tokenizer", "tok",
      "--vocab-size", "30000", "--lowercase", "--data-dir", "cache", "--steps", "1000000",
      "--batch-size", "256", "--seq-len", "64", "--max-predictions", "20", "--whole-word",
      "--pack", "--accum-steps", "2", "--mesh", "data=4,fsdp=2,tensor=1", "--optimizer", "lamb",
      "--lr", "1e-4", "--warmup-steps", "100", "--schedule", "cosine", "--weight-decay", "0.02",
      "--clip-norm", "0.5", "--seed", "3", "--log-every", "5", "--eval-every", "50",
      "--eval-batches", "2", "--checkpoint-every", "25", "--keep-checkpoints", "1",
      "--sync-checkpoints", "--set", "dtype=bfloat16", "--set", "remat=true",
      "--set", "hidden_dropout=0.2", "--quiet", "--distributed", "--coordinator", "h:1234",
      "--num-processes", "2", "--process-id", "1", "--aot-topology", "v5p:4x4x8",
      "--aot-chip-config", "default", "--aot-slices", "2")
  assert pretrain.make_config(args) == PretrainConfig(
      workdir="runs/base", model="bert_12_768_12",
      overrides=(("dtype", "bfloat16"), ("remat", True), ("hidden_dropout", 0.2)),
      corpus=("a.txt", "b.txt"), eval_corpus=("c.txt",), tokenizer="tok", vocab_size=30000,
      lowercase=True, data_dir="cache", steps=1000000, batch_size=256, seq_len=64,
      max_predictions=20, whole_word=True, pack=True, accum_steps=2,
      mesh="data=4,fsdp=2,tensor=1", optimizer="lamb", learning_rate=1e-4, warmup_steps=100,
      schedule="cosine", weight_decay=0.02, clip_norm=0.5, seed=3, log_every=5, eval_every=50,
      eval_batches=2, checkpoint_every=25, keep_checkpoints=1, async_checkpoints=False,
      progress=False)
  # Not config fields: the recipe, multi-host start and ahead-of-time compilation.
  assert (args.architecture, args.distributed, args.coordinator, args.num_processes,
          args.process_id) == ("encdec", True, "h:1234", 2, 1)
  assert (args.aot_topology, args.aot_chip_config, args.aot_slices) == ("v5p:4x4x8", "default",
                                                                          2)


def test_pretrain_sequence_length_is_max_length_with_seq_len_kept():
  assert pretrain_config("--workdir", "w", "--max-length", "256").seq_len == 256
  assert pretrain_config("--workdir", "w", "--seq-len", "256").seq_len == 256
  assert finetune_config("classify", *FT_REQUIRED, "--max-length", "64").max_seq_length == 64


def test_every_old_finetune_flag_parses_as_before():
  common = ("--epochs", "1.5", "--batch-size", "16", "--eval-batch-size", "8", "--max-length",
            "64", "--lr", "3e-5", "--warmup-ratio", "0.2", "--weight-decay", "0", "--clip-norm",
            "2", "--seed", "1", "--max-train-examples", "100", "--max-dev-examples", "10",
            "--mesh", "data=1", "--log-every", "1", "--checkpoint-every", "7",
            "--keep-checkpoints", "1", "--sync-checkpoints", "--quiet")
  expected = dict(
      train="t", dev="d", init="m", workdir="w", epochs=1.5, batch_size=16, eval_batch_size=8,
      max_seq_length=64, learning_rate=3e-5, warmup_ratio=0.2, weight_decay=0.0, clip_norm=2.0,
      seed=1, max_train_examples=100, max_dev_examples=10, mesh="data=1", log_every=1,
      checkpoint_every=7, keep_checkpoints=1, async_checkpoints=False, progress=False)
  qa = finetune_config("qa", *FT_REQUIRED, *common, "--doc-stride", "64", "--max-query-length",
                       "32", "--max-answer-length", "15", "--n-best", "5", "--version-1",
                       "--null-threshold", "0.5")
  assert qa == FinetuneConfig(task="qa", doc_stride=64, max_query_length=32,
                              max_answer_length=15, n_best=5, version_2=False,
                              null_threshold=0.5, **expected)
  assert finetune_config("qa", *FT_REQUIRED, "--version-2").version_2 is True
  assert finetune_config("qa", *FT_REQUIRED).version_2 is None
  assert finetune_config("classify", *FT_REQUIRED, *common, "--regression") == FinetuneConfig(
      task="classify", regression=True, **expected)
  assert finetune_config("ner", *FT_REQUIRED, *common) == FinetuneConfig(task="ner", **expected)


@pytest.mark.parametrize("argv", [
    ("finetune", "qa", *FT_REQUIRED, "--version-1", "--version-2"),
    ("finetune", "ner", *FT_REQUIRED, "--regression"),       # classify only, as before
    ("finetune", "classify", *FT_REQUIRED, "--doc-stride", "64"),   # qa only
    ("finetune", "ner"),                                     # required flags missing
    ("pretrain", "--workdir", "w", "--optimizer", "sgd"),
])
def test_flags_a_command_does_not_take_are_usage_errors(argv, capsys):
  with pytest.raises(SystemExit) as e:
    parse(*argv)
  assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_every_old_seq2seq_flag_parses_as_before_and_the_new_ones():
  cfg = seq2seq_config(
      *S2S_REQUIRED, "--init", "runs/t5/bundle", "--config", "transformer_base", "--set",
      "pre_ln=true", "--set", "hidden_size=256", "--vocab-size", "4000", "--max-source-length",
      "32", "--max-target-length", "16", "--steps", "1500", "--batch-size", "64",
      "--no-length-buckets", "--mesh", "data=1", "--lr", "1.5e-3", "--warmup-steps", "500",
      "--weight-decay", "0.1", "--clip-norm", "0.5", "--label-smoothing", "0.2", "--seed", "2",
      "--log-every", "3", "--eval-every", "2500", "--eval-examples", "10", "--beam", "5",
      "--alpha", "0.7", "--checkpoint-every", "9", "--quiet")
  assert cfg == Seq2SeqConfig(
      workdir="w", train="t.tsv", dev="d.tsv", init="runs/t5/bundle", model="transformer_base",
      overrides=(("pre_ln", True), ("hidden_size", 256)), vocab_size=4000, max_source_length=32,
      max_target_length=16, steps=1500, batch_size=64, bucket_by_length=False, mesh="data=1",
      learning_rate=1.5e-3, warmup_steps=500, weight_decay=0.1, clip_norm=0.5,
      label_smoothing=0.2, seed=2, log_every=3, eval_every=2500, eval_examples=10, beam_size=5,
      alpha=0.7, checkpoint_every=9, progress=False)
  new = seq2seq_config(*S2S_REQUIRED, "--max-train-examples", "5", "--keep-checkpoints", "1",
                       "--sync-checkpoints", "--decode-batch-size", "16")
  assert new == Seq2SeqConfig(workdir="w", train="t.tsv", dev="d.tsv", max_train_examples=5,
                              keep_checkpoints=1, async_checkpoints=False, decode_batch_size=16)


def test_without_flags_every_command_gets_the_dataclass_defaults():
  assert pretrain_config("--workdir", "w") == PretrainConfig(workdir="w")
  for task in ("classify", "ner", "qa"):
    assert finetune_config(task, *FT_REQUIRED) == FinetuneConfig(
        task=task, train="t", dev="d", init="m", workdir="w")
  assert seq2seq_config(*S2S_REQUIRED) == Seq2SeqConfig(workdir="w", train="t.tsv",
                                                        dev="d.tsv")


def test_a_bad_set_is_one_error_line(capsys):
  assert cli.main(["pretrain", "--workdir", "unused", "--set", "dtype"]) == 2
  err = capsys.readouterr().err
  assert err == "flaxbert: error: --set 'dtype': expected KEY=VALUE\n"


def _help_entries(argv, monkeypatch, capsys) -> dict[str, str]:
  """--help of a command as {first flag: its whole entry, whitespace collapsed}."""
  monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside the texts looked for
  with pytest.raises(SystemExit):
    parse(*argv, "--help")
  entries, current = {}, None
  for line in capsys.readouterr().out.splitlines():
    if line.startswith("  -"):
      current = line.split()[0].rstrip(",")
      entries[current] = ""
    if current and line.strip():
      entries[current] += " " + " ".join(line.split())
  return entries


@pytest.mark.parametrize("argv, cls", [
    (("pretrain",), PretrainConfig),
    (("finetune", "classify"), FinetuneConfig),
    (("finetune", "ner"), FinetuneConfig),
    (("finetune", "qa"), FinetuneConfig),
    (("finetune", "seq2seq"), Seq2SeqConfig),
])
def test_help_shows_each_default(argv, cls, monkeypatch, capsys):
  entries = _help_entries(argv, monkeypatch, capsys)
  shown = 0
  for field in dataclasses.fields(cls):
    flag = field.metadata["flag"] or "--" + field.name.replace("_", "-")
    if flag not in entries:
      continue  # left out by this command (task, the QA settings, ...)
    if field.metadata["default_help"]:
      assert f"(default: {field.metadata['default_help']})" in entries[flag], flag
      shown += 1
    elif field.default not in (None, True, False, (), dataclasses.MISSING):
      assert f"(default: {field.default})" in entries[flag], flag
      shown += 1
  assert shown >= 10


def test_one_setting_has_one_flag_in_every_command():
  by_name = {}
  for cls in CONFIGS:
    for field in dataclasses.fields(cls):
      by_name.setdefault(field.name, []).append(field.metadata)
  several = {name: mds for name, mds in by_name.items() if len(mds) > 1}
  assert {"workdir", "seed", "mesh", "log_every", "checkpoint_every", "keep_checkpoints",
          "async_checkpoints", "progress", "learning_rate", "model", "overrides"} <= set(several)
  for name, mds in several.items():
    for md in mds[1:]:
      for key in ("flag", "aliases", "choices", "identity", "false_flag"):
        assert md[key] == mds[0][key], (name, key)
      if name in SHARED:  # the file settings (train, dev, init) differ in format and metavar
        assert md["help"] == mds[0]["help"] and md["metavar"] == mds[0]["metavar"], name
  flags = {name: mds[0]["flag"] for name, mds in by_name.items()}
  assert (flags["learning_rate"], flags["model"], flags["overrides"], flags["progress"],
          flags["async_checkpoints"], flags["beam_size"], flags["bucket_by_length"]) == (
      "--lr", "--config", "--set", "--quiet", "--sync-checkpoints", "--beam",
      "--no-length-buckets")
  assert flags["seq_len"] == flags["max_seq_length"] == "--max-length"


def test_settings_that_may_change_on_resume():
  def changeable(cls):
    return {f.name for f in dataclasses.fields(cls)} - set(identity_fields(cls))
  watching = {"log_every", "checkpoint_every", "keep_checkpoints", "async_checkpoints",
              "progress", "mesh"}
  assert changeable(PretrainConfig) == watching | {"eval_every", "eval_batches", "data_dir",
                                                   "steps"}
  assert changeable(FinetuneConfig) == watching | {"eval_batch_size", "max_dev_examples",
                                                   "epochs", "max_steps", "eval_every"}
  assert changeable(Seq2SeqConfig) == watching | {"eval_every", "eval_examples",
                                                  "decode_batch_size", "steps"}
  assert {"seed", "learning_rate", "seq_len", "model", "overrides", "corpus"} <= \
      set(identity_fields(PretrainConfig))


def test_configs_are_frozen_and_keep_their_properties():
  cfg = PretrainConfig(workdir="w", model="bert_12_768_12", steps=None)
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.seed = 1
  assert cfg.total_steps == 1_000_000
  assert cfg.optimizer_config().learning_rate == 1e-4
  assert cfg.optimizer_config().warmup_steps == 100_000
  ft = FinetuneConfig(task="classify", train="t", dev="d", init="m", workdir="w",
                      regression=True)
  assert (ft.data_task, ft.head, ft.metric) == ("regression", "regression", "pearson")


def _run(*cmd):
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_version_from_python_dash_m():
  proc = _run(sys.executable, "-m", "flaxbert", "--version")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == f"flaxbert {__version__}\n" == "flaxbert 0.1.0\n"


def test_version_from_the_installed_command():
  script = os.path.join(os.path.dirname(sys.executable), "flaxbert")
  # .ci/run installs flaxbert into the tests' environment: the console script must be there.
  assert os.path.exists(script), f"{script}: not installed (pip install -e '.[test]')"
  proc = _run(script, "--version")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == "flaxbert 0.1.0\n"
