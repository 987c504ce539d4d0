"""The task registry: one name per task everywhere; the predict path encodes texts exactly as
the fine-tuning data; seq2seq predict/evaluate read the TSV fine-tuning reads."""

import json
import os

import jax
import numpy as np
import pytest
import sacrebleu

from conftest import SHARED_DATA, write_vocab
from flaxbert import bundle as bundle_lib
from flaxbert import cli
from flaxbert.data import pipeline
from flaxbert.data.tokenizer import load_tokenizer
from flaxbert.errors import FlaxbertError
from flaxbert.inference import embed
from flaxbert.models import encdec
from flaxbert.models.encdec_config import get_config
from flaxbert.tasks import NAMES, predict, registry


def _cli(capsys, *args):
  rc = cli.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return rc, out, err


def test_names_fields_and_unknown_task(tmp_path, capsys):
  assert registry.NAMES == NAMES == ("classify", "regression", "ner", "qa", "seq2seq")
  table = {name: (t.head, t.data, t.metric, t.extension) for name, t in registry.TASKS.items()}
  assert table == {"classify": ("classification", "classification", "accuracy", "tsv"),
                   "regression": ("regression", "regression", "pearson", "tsv"),
                   "ner": ("tagging", "tagging", "f1", "conll"),
                   "qa": ("span_qa", "squad", "f1", "json"),
                   "seq2seq": ("seq2seq", "seq2seq", "bleu", "txt")}
  assert registry.get("classify", regression=True) is registry.get("regression")
  with pytest.raises(FlaxbertError) as error:
    registry.get("sentiment")
  assert str(error.value) == ("unknown task 'sentiment' (known: classify, regression, ner, qa, "
                              "seq2seq)")
  with pytest.raises(FlaxbertError, match="--regression applies to classify only"):
    registry.get("ner", regression=True)
  # The library's entry points say the same in one line.
  with pytest.raises(FlaxbertError, match="unknown task 'sentiment'"):
    predict.score_file("sentiment", str(tmp_path / "p.txt"))
  # The finetune recipe names its task through the registry.
  from flaxbert.recipes.finetune import FinetuneConfig
  cfg = FinetuneConfig(task="classify", train="t", dev="d", init="i", workdir="w",
                       regression=True)
  task = registry.get(cfg.task, cfg.regression)
  assert (task.name, cfg.task_name, cfg.head, cfg.data_task, cfg.metric) == (
      "regression", "regression", "regression", "regression", "pearson")
  assert (task.head, task.data, task.metric) == (cfg.head, cfg.data_task, cfg.metric)


def test_dev_label_check_names_the_dev_line(tmp_path):
  (tmp_path / "t.conll").write_text("Paris\tB-LOC\nis\tO\n\nBob\tB-PER\n")
  (tmp_path / "d.conll").write_text("Rome\tB-LOC\n\nAcme\tB-ORG\nsells\tO\n")
  with pytest.raises(FlaxbertError) as error:
    registry.NER.prepare_files(str(tmp_path / "t.conll"), str(tmp_path / "d.conll"),
                               str(tmp_path / "run"))
  assert str(error.value) == (f"{tmp_path / 'd.conll'}:3: unknown tag 'B-ORG' (the training "
                              "tags are B-LOC, B-PER, O)")
  (tmp_path / "d.conll").write_text("Rome\tB-LOC\n\nAda\tB-PER\nsings\tO\n")
  prepared = registry.NER.prepare_files(str(tmp_path / "t.conll"), str(tmp_path / "d.conll"),
                                        str(tmp_path / "run"), max_dev_examples=1)
  assert prepared.labels == ["O", "B-LOC", "B-PER"]
  assert open(prepared.dev).read() == "Rome\tB-LOC\n\n"


def test_regression_files_need_numbers(tmp_path):
  train, dev = tmp_path / "t.tsv", tmp_path / "d.tsv"
  train.write_text("sentence\tlabel\ngood\t0.5\nbad\t-1\nfine\t0.5\n")
  dev.write_text("sentence\tlabel\nok\t0.25\nmeh\thigh\n")
  with pytest.raises(FlaxbertError) as error:
    registry.REGRESSION.prepare_files(str(train), str(dev), str(tmp_path / "run"))
  assert str(error.value) == f"{dev}:3: label 'high' is not a number"
  # As classes the same files are fine up to the dev label the training file lacks.
  with pytest.raises(FlaxbertError, match=f"{dev}:2: unknown label '0.25'"):
    registry.CLASSIFY.prepare_files(str(train), str(dev), str(tmp_path / "run"))
  dev.write_text("sentence\tlabel\nok\t0.25\n")
  prepared = registry.REGRESSION.prepare_files(str(train), str(dev), str(tmp_path / "run"),
                                               max_train_examples=2, seed=1)
  assert prepared.labels is None and len(prepared.train_labels) == 2
  assert prepared.train == str(tmp_path / "run" / "data" / "train_subset.tsv")
  assert open(prepared.train).readline() == "sentence\tlabel\n"


def test_predict_inputs_equal_the_finetuning_data(tmp_path):
  """Sentence pairs and single sentences, many cut to 24 tokens: the ids, segments and mask
  `predict` (and `embed`) feed the model are the fine-tuning pipeline's, row for row."""
  vocab_dir = tmp_path / "vocab"
  vocab_dir.mkdir()
  write_vocab(vocab_dir / "vocab.txt", 300)
  tokenizer = load_tokenizer(str(vocab_dir))
  settings = predict.TaskSettings("classify", max_seq_length=24)
  for name, rows in (("wsd_pairs", 41), ("sentiment", 41)):
    path = tmp_path / f"{name}.tsv"
    with open(os.path.join(SHARED_DATA, name, "train.tsv"), encoding="utf-8") as f:
      path.write_text("".join(next(f) for _ in range(rows)), encoding="utf-8")
    data = pipeline.finetune_data("classification", {"train": str(path)}, str(vocab_dir),
                                  str(tmp_path / "prepared"), max_seq_length=24)
    batch = next(data.batches("train", batch_size=40, shuffle=False, num_epochs=1,
                              drop_remainder=False, process_index=0, process_count=1))
    assert batch["input_mask"].sum(1).max() == 24   # some rows were cut
    inputs = registry.CLASSIFY.inputs(tokenizer, settings, data.labels, str(path),
                                      need_label=True)
    for key in ("input_ids", "segment_ids", "input_mask"):
      np.testing.assert_array_equal(inputs.arrays[key], batch[key], err_msg=f"{name} {key}")
    a, b = inputs.table.texts
    texts = list(zip(a, b if b is not None else [None] * len(a)))
    ids, segments, mask = embed.encode_rows(tokenizer, texts, 24)
    np.testing.assert_array_equal(ids, batch["input_ids"][:, :ids.shape[1]])
    np.testing.assert_array_equal(segments, batch["segment_ids"][:, :ids.shape[1]])


def test_evaluate_seq2seq_is_sacrebleu(tmp_path, capsys):
  gold = tmp_path / "dev.tsv"
  lines = open(os.path.join(SHARED_DATA, "translation", "examples_dev.tsv"),
               encoding="utf-8").read().splitlines()[:31]
  gold.write_text("\n".join(lines) + "\n", encoding="utf-8")
  assert lines[0] == "source\ttarget"
  references = [line.split("\t")[1] for line in lines[1:]]
  # Hypotheses: the references with every third one changed, and one left empty.
  hypotheses = [r if i % 3 else r.split(" ")[0] + " und so" for i, r in enumerate(references)]
  hypotheses[4] = ""
  predictions = tmp_path / "pred.txt"
  predictions.write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
  rc, out, err = _cli(capsys, "evaluate", "--task", "seq2seq", "--predictions", predictions,
                      "--gold", gold)
  assert rc == 0, err
  scores = json.loads(out)
  assert scores == {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
                    "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score}
  assert 0 < scores["bleu"] < 100
  predictions.write_text("".join(h + "\n" for h in hypotheses[:-1]), encoding="utf-8")
  rc, out, err = _cli(capsys, "evaluate", "--task", "seq2seq", "--predictions", predictions,
                      "--gold", gold)
  assert rc == 2 and len(err.strip().splitlines()) == 1
  assert err.startswith(f"flaxbert: error: {predictions}: 29 lines but {gold} has 30")
  rc, out, err = _cli(capsys, "evaluate", "--task", "seq2seq", "--predictions", predictions)
  assert rc == 2 and "pass the gold source<TAB>target TSV with --gold" in err


@pytest.fixture(scope="module")
def tiny_encdec(tmp_path_factory):
  """A randomly initialised 2+2-layer encoder-decoder bundle with a WordPiece vocabulary."""
  root = tmp_path_factory.mktemp("encdec")
  write_vocab(root / "vocab.txt", 300)
  tokenizer = load_tokenizer(str(root))
  config = get_config("tiny", vocab_size=384, pad_token_id=tokenizer.pad_id,
                      decoder_start_id=tokenizer.cls_id, eos_token_id=tokenizer.sep_id)
  model = encdec.EncDecModel(config)
  params = jax.device_get(encdec.init_params(model, jax.random.key(3)))
  path = str(root / "bundle")
  bundle_lib.save(path, bundle_lib.Bundle(model, params, tokenizer, config, "seq2seq"))
  return path


def test_predict_seq2seq_reads_the_training_tsv(tiny_encdec, tmp_path, capsys):
  """On the source<TAB>target TSV fine-tuning reads, predict translates the sources only and
  not the header: the same outputs, line for line, as on a file of just the sources."""
  pairs = [("food chain", "Nahrungskette"), ("walk in clinics", "Polikliniken"),
           ("burner gas", "Brenngas")]
  tsv = tmp_path / "dev.tsv"
  tsv.write_text("source\ttarget\n" + "".join(f"{s}\t{t}\n" for s, t in pairs))
  plain = tmp_path / "sources.txt"
  plain.write_text("".join(f"{s}\n" for s, _ in pairs))
  outputs = {}
  for name, path in (("tsv", tsv), ("plain", plain)):
    out = tmp_path / f"{name}.out"
    rc, stdout, err = _cli(capsys, "predict", tiny_encdec, "--task", "seq2seq", "--input", path,
                           "--output", out, "--max-output-length", 6, "--quiet")
    assert rc == 0, err
    assert stdout.strip() == f"wrote {out}: 3 predictions"
    outputs[name] = out.read_text(encoding="utf-8").splitlines()
  assert len(outputs["tsv"]) == 3 and outputs["tsv"] == outputs["plain"]
  # Evaluate scores the predictions against the same TSV; the copy baseline is sacrebleu's
  # score of the sources as translations.
  rc, out, err = _cli(capsys, "evaluate", "--task", "seq2seq", "--predictions",
                      tmp_path / "tsv.out", "--gold", tsv)
  assert rc == 0, err
  targets = [t for _, t in pairs]
  assert json.loads(out)["chrf"] == sacrebleu.corpus_chrf(outputs["tsv"], [targets]).score
  settings = predict.TaskSettings("seq2seq")
  dev = registry.SEQ2SEQ.inputs(None, settings, None, str(tsv), need_label=True)
  assert dev.sources == [s for s, _ in pairs] and dev.targets == targets
  assert registry.SEQ2SEQ.baseline(dev, None) == {
      "bleu": sacrebleu.corpus_bleu(dev.sources, [targets]).score,
      "chrf": sacrebleu.corpus_chrf(dev.sources, [targets]).score}
  # A BERT bundle, or a seq2seq bundle asked for another task: one line each.
  rc, _, err = _cli(capsys, "predict", tiny_encdec, "--task", "ner", "--input", tsv,
                    "--output", tmp_path / "x")
  assert rc == 2 and "a 'seq2seq' bundle cannot predict 'ner'" in err
  assert len(err.strip().splitlines()) == 1
