"""Fine-tuning datasets on slices of the shipped data: classification, tagging, SQuAD, seq2seq."""

import json

import numpy as np
import pytest

from flaxbert.data import pipeline
from flaxbert.data.readers import SkipCounter, read_squad
from flaxbert.data.tokenizer import load_tokenizer
from data_fixtures import head_lines, shared


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("prepared"))


def _eval_batches(data, split, batch_size):
  return list(data.batches(split, batch_size=batch_size, shuffle=False, num_epochs=1,
                           drop_remainder=False, process_index=0, process_count=1))


def test_sentence_classification(tmp_path, spm_dir, data_dir):
  train = head_lines(shared("sentiment", "train.tsv"), str(tmp_path / "train.tsv"), 301)
  dev = head_lines(shared("sentiment", "dev.tsv"), str(tmp_path / "dev.tsv"), 51)
  data = pipeline.finetune_data("classification", {"train": train, "dev": dev}, spm_dir,
                                data_dir, max_seq_length=48)
  assert data.labels == ["negative", "neutral", "positive"]
  assert data.num_examples("train") == 300 and data.num_examples("dev") == 50
  batch = next(data.batches("train", batch_size=8, process_index=0, process_count=1))
  assert batch["input_ids"].shape == (8, 48) and batch["label"].dtype == np.int32
  assert set(batch) == {"input_ids", "segment_ids", "input_mask", "label", "example_weight"}
  batches = _eval_batches(data, "dev", 16)
  assert len(batches) == 4   # 50 examples: 3 full batches and one of 2 real rows
  weights = np.concatenate([b["example_weight"] for b in batches])
  assert weights.sum() == 50 and np.all(weights[50:] == 0)
  # File order, labels as in the file.
  with open(dev, encoding="utf-8") as f:
    gold = [line.rstrip("\n").split("\t")[1] for line in f][1:]
  labels = np.concatenate([b["label"] for b in batches])[:50]
  assert [data.labels[i] for i in labels] == gold


def test_sentence_pair_classification(tmp_path, spm_dir, data_dir):
  train = head_lines(shared("wsd_pairs", "train.tsv"), str(tmp_path / "train.tsv"), 101)
  data = pipeline.finetune_data("classification", {"train": train}, spm_dir, data_dir,
                                max_seq_length=64)
  assert data.labels == ["0", "1"]
  batch = _eval_batches(data, "train", 100)[0]
  tokenizer = load_tokenizer(spm_dir)
  first = batch["input_ids"][0][batch["input_mask"][0] == 1]
  segments = batch["segment_ids"][0][batch["input_mask"][0] == 1]
  assert first[0] == tokenizer.cls_id and list(first).count(tokenizer.sep_id) == 2
  assert segments[-1] == 1 and segments[0] == 0
  assert tokenizer.decode(first).startswith("the oceans are teeming with life")


def test_token_tagging_labels_first_subtokens(tmp_path, spm_dir, data_dir):
  train = head_lines(shared("ner", "train.conll"), str(tmp_path / "train.conll"), 400)
  data = pipeline.finetune_data("tagging", {"train": train}, spm_dir, data_dir,
                                max_seq_length=64)
  assert data.labels[0] == "O" and all(t[:2] in ("B-", "I-") for t in data.labels[1:])
  batch = _eval_batches(data, "train", 4)[0]
  tokenizer = load_tokenizer(spm_dir)
  with open(train, encoding="utf-8") as f:
    first_sentence = f.read().split("\n\n")[0].splitlines()
  tags = [line.split("\t")[1] for line in first_sentence]
  labels = batch["labels"][0]
  assert [data.labels[i] for i in labels[labels >= 0]] == tags
  assert batch["num_words"][0] == len(tags)
  starts = tokenizer.is_word_start(batch["input_ids"][0][1:int(batch["input_mask"][0].sum()) - 1])
  assert list(labels[1:1 + len(starts)] >= 0) == starts
  assert np.all(labels[batch["input_mask"][0] == 0] == -1) and labels[0] == -1


def test_squad_offsets_recover_the_answer(tmp_path, spm_dir, data_dir):
  with open(shared("qa", "dev.json"), encoding="utf-8") as f:
    squad = json.load(f)
  squad["data"] = squad["data"][:12]
  path = tmp_path / "dev.json"
  path.write_text(json.dumps(squad), encoding="utf-8")
  data = pipeline.finetune_data("squad", {"dev": str(path)}, spm_dir, data_dir,
                                max_seq_length=96, doc_stride=16)
  questions = {q["id"]: q for q in read_squad(str(path), SkipCounter("test"))}
  assert data.num_examples("dev") > len(questions)   # long contexts need several windows
  found = set()
  for batch in _eval_batches(data, "dev", 16):
    for row in range(16):
      if batch["example_weight"][row] == 0:
        continue
      start, end = batch["start_position"][row], batch["end_position"][row]
      example_id = batch["example_id"][row].decode()
      if start == 0:
        continue   # this window does not hold the answer
      context = questions[example_id]["context"]
      text = context[batch["token_char_start"][row][start]:batch["token_char_end"][row][end]]
      assert text == questions[example_id]["answers"][0]["text"]
      found.add(example_id)
  assert found == set(questions)


def test_seq2seq(tmp_path, spm_dir, data_dir):
  train = head_lines(shared("translation", "examples_train.tsv"), str(tmp_path / "t.tsv"), 65)
  data = pipeline.finetune_data("seq2seq", {"train": train}, spm_dir, data_dir,
                                max_source_length=24, max_target_length=32)
  batch = next(data.batches("train", batch_size=8, process_index=0, process_count=1))
  assert batch["source_ids"].shape == (8, 24) and batch["target_ids"].shape == (8, 32)
  tokenizer = load_tokenizer(spm_dir)
  for ids, mask in ((batch["source_ids"], batch["source_mask"]),
                    (batch["target_ids"], batch["target_mask"])):
    lengths = mask.sum(1)
    assert np.all(ids[np.arange(8), lengths - 1] == tokenizer.sep_id)   # EOS
  assert "input_ids" not in batch


def test_length_bucketed_seq2seq_batches(tmp_path, spm_dir, data_dir):
  """Bucketed batches: one epoch of batches holds every pair exactly once, a batch's padding
  is cut to a multiple of 8 over its longest row (no real token lost), lengths within a batch
  are closer than in shuffled order, two processes split each global batch with equal shapes,
  and a restored iterator state yields exactly the next batch."""
  train = head_lines(shared("translation", "examples_train.tsv"), str(tmp_path / "t.tsv"), 1025)
  data = pipeline.finetune_data("seq2seq", {"train": train}, spm_dir, data_dir,
                                max_source_length=40, max_target_length=40)
  n, batch_size = data.num_examples("train"), 16
  assert n == 1024
  one = data.batches("train", batch_size=batch_size, process_index=0, process_count=1,
                     bucket_by_length=True)
  plain = data.batches("train", batch_size=batch_size, process_index=0, process_count=1)
  batches = [next(one) for _ in range(n // batch_size)]
  pairs = [tuple(map(tuple, (s[m > 0], t[k > 0]))) for b in batches
           for s, m, t, k in zip(b["source_ids"], b["source_mask"], b["target_ids"],
                                 b["target_mask"])]
  source = data.sources["train"]
  stored = [(tuple(r["source_ids"]), tuple(r["target_ids"])) for r in source.__getitems__(
      list(range(n)))]
  assert sorted(pairs) == sorted(stored)            # every pair once, none cut
  shapes = set()
  for b in batches:
    for side in ("source", "target"):
      width, longest = b[f"{side}_ids"].shape[1], b[f"{side}_mask"].sum(1).max()
      assert width % 8 == 0 and longest <= width < longest + 8
    shapes.add((b["source_ids"].shape[1], b["target_ids"].shape[1]))
  assert len(shapes) > 1

  def spread(b):
    return np.mean(b["target_mask"].sum(1).max() - b["target_mask"].sum(1))
  plain_batches = [next(plain) for _ in range(len(batches))]
  assert np.mean([spread(b) for b in batches]) < 0.5 * np.mean([spread(b) for b in
                                                                plain_batches])

  halves = [data.batches("train", batch_size=batch_size, process_index=i, process_count=2,
                         bucket_by_length=True) for i in range(2)]
  for b in batches[:5]:
    h0, h1 = next(halves[0]), next(halves[1])
    for key in b:
      np.testing.assert_array_equal(np.concatenate([h0[key], h1[key]]), b[key])

  again = data.batches("train", batch_size=batch_size, process_index=0, process_count=1,
                       bucket_by_length=True)
  for _ in range(7):
    next(again)
  state = again.get_state()
  expected = next(again)
  resumed = data.batches("train", batch_size=batch_size, process_index=0, process_count=1,
                         bucket_by_length=True)
  resumed.set_state(state)
  got = next(resumed)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])
