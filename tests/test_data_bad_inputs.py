"""Bad input gives a one-line FlaxbertError naming file and line, or a counted log line."""

import json
import logging

import pytest

from flaxbert.data import pipeline
from flaxbert.data.tokenizer import train_sentencepiece
from flaxbert.errors import FlaxbertError


@pytest.fixture
def data_dir(tmp_path):
  return str(tmp_path / "prepared")


def _write(path, data: bytes | str):
  if isinstance(data, str):
    data = data.encode("utf-8")
  path.write_bytes(data)
  return str(path)


def _pretrain(corpus, spm_dir, data_dir):
  return next(pipeline.pretraining_batches([corpus], spm_dir, data_dir, batch_size=2,
                                           seq_length=32, process_index=0, process_count=1))


def _one_line(error: pytest.ExceptionInfo) -> str:
  message = str(error.value)
  assert "\n" not in message
  return message


def test_non_utf8_corpus_names_file_and_line(tmp_path, spm_dir, data_dir):
  corpus = _write(tmp_path / "c.txt", b"A first line.\nA second line.\n\nBad \xff byte here.\n")
  with pytest.raises(FlaxbertError) as error:
    _pretrain(corpus, spm_dir, data_dir)
  assert _one_line(error) == f"{corpus}:4: not UTF-8 (byte 0xff at column 5)"


def test_single_document_corpus_is_refused(tmp_path, spm_dir, data_dir):
  corpus = _write(tmp_path / "c.txt", "One sentence here.\nAnother sentence there.\n")
  with pytest.raises(FlaxbertError, match="at least two documents") as error:
    _pretrain(corpus, spm_dir, data_dir)
  assert _one_line(error).startswith(f"{corpus}: next-sentence prediction needs at least two "
                                     "documents")
  assert _one_line(error).endswith("found 1")


def test_empty_documents_and_huge_lines_are_skipped_and_counted(tmp_path, spm_dir, data_dir,
                                                               caplog):
  huge = "x" * 1_000_000
  corpus = _write(tmp_path / "c.txt",
                  "First doc line one.\nFirst doc line two.\n\n\n\n" + huge + "\n\n"
                  "Second doc line one.\nSecond doc " + huge + "\nSecond doc line three.\n")
  with caplog.at_level(logging.WARNING, logger="flaxbert.data"):
    batch = _pretrain(corpus, spm_dir, data_dir)
  assert batch["input_ids"].shape == (2, 32)
  messages = [r.getMessage() for r in caplog.records if r.name == "flaxbert.data"]
  assert any(f"2 lines skipped: over 100000 characters (first at {corpus}:6)" in m
             for m in messages), messages
  assert any(f"1 documents skipped: all their lines were skipped (first at {corpus}:7)" in m
             for m in messages), messages


def test_empty_corpus(tmp_path, spm_dir, data_dir):
  corpus = _write(tmp_path / "c.txt", "\n\n\n")
  with pytest.raises(FlaxbertError, match="found 0"):
    _pretrain(corpus, spm_dir, data_dir)


def test_missing_corpus_file(tmp_path, spm_dir, data_dir):
  with pytest.raises(FlaxbertError, match="no such file"):
    _pretrain(str(tmp_path / "absent.txt"), spm_dir, data_dir)


def test_tsv_row_with_wrong_column_count(tmp_path, spm_dir, data_dir):
  tsv = _write(tmp_path / "t.tsv", "sentence\tlabel\ngood row\tpositive\nno label here\n")
  with pytest.raises(FlaxbertError) as error:
    pipeline.finetune_data("classification", {"train": tsv}, spm_dir, data_dir)
  assert _one_line(error) == (f"{tsv}:3: expected 2 tab-separated columns like the first row, "
                              "found 1")


def test_unknown_dev_label(tmp_path, spm_dir, data_dir):
  train = _write(tmp_path / "train.tsv", "good\tpositive\nbad\tnegative\n")
  dev = _write(tmp_path / "dev.tsv", "fine\tpositive\nmeh\tmixed\n")
  with pytest.raises(FlaxbertError) as error:
    # Dev listed first: label names still come from the train split.
    pipeline.finetune_data("classification", {"dev": dev, "train": train}, spm_dir, data_dir)
  assert _one_line(error).startswith(f"{dev}:2: unknown label 'mixed'")


def test_regression_label_not_a_number(tmp_path, spm_dir, data_dir):
  train = _write(tmp_path / "train.tsv", "a\tb\t0.5\nc\td\thigh\n")
  with pytest.raises(FlaxbertError, match=f"{train}:2: label 'high' is not a number"):
    pipeline.finetune_data("regression", {"train": train}, spm_dir, data_dir)


def test_malformed_squad_json(tmp_path, spm_dir, data_dir):
  path = _write(tmp_path / "qa.json", '{"version": "1.1",\n "data": [\n  {"title": x}\n]}\n')
  with pytest.raises(FlaxbertError) as error:
    pipeline.finetune_data("squad", {"train": path}, spm_dir, data_dir)
  assert _one_line(error).startswith(f"{path}:3: malformed JSON")


def test_squad_answer_not_in_context_is_counted(tmp_path, spm_dir, data_dir, caplog):
  squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{
      "context": "A cat is a small animal. A dog is a loyal animal.",
      "qas": [{"id": "q1", "question": "What is a cat?",
               "answers": [{"text": "a small animal", "answer_start": 9}]},
              {"id": "q2", "question": "What is a dog?",
               "answers": [{"text": "a loyal animal", "answer_start": 3}]}]}]}]}
  path = _write(tmp_path / "qa.json", json.dumps(squad))
  with caplog.at_level(logging.WARNING, logger="flaxbert.data"):
    data = pipeline.finetune_data("squad", {"train": path}, spm_dir, data_dir)
  assert data.num_examples("train") == 1
  messages = " ".join(r.getMessage() for r in caplog.records)
  assert "1 questions skipped: no answer points at its text" in messages and "id q2" in messages


def test_conll_line_without_tag(tmp_path, spm_dir, data_dir):
  path = _write(tmp_path / "n.conll", "Paris\tB-geo-loc\nis\tO\n\nlonely\n")
  with pytest.raises(FlaxbertError, match=f"{path}:4: expected 'token<TAB>tag'"):
    pipeline.finetune_data("tagging", {"train": path}, spm_dir, data_dir)


def test_unknown_task(spm_dir, data_dir):
  with pytest.raises(FlaxbertError, match="unknown task 'sts'"):
    pipeline.finetune_data("sts", {}, spm_dir, data_dir)


def test_non_utf8_tsv_names_file_and_line(tmp_path, spm_dir, data_dir):
  tsv = _write(tmp_path / "t.tsv", b"sentence\tlabel\ngood row\tpositive\nbad \xc3( row\tnegative\n")
  with pytest.raises(FlaxbertError) as error:
    pipeline.finetune_data("classification", {"train": tsv}, spm_dir, data_dir)
  assert _one_line(error) == f"{tsv}:3: not UTF-8 (byte 0xc3 at column 5)"


def test_non_utf8_json_names_file_and_line(tmp_path, spm_dir, data_dir):
  path = _write(tmp_path / "qa.json", b'{"version": "1.1",\n "data": [\n  {"title": "\xff"}]}\n')
  with pytest.raises(FlaxbertError) as error:
    pipeline.finetune_data("squad", {"train": path}, spm_dir, data_dir)
  assert _one_line(error) == f"{path}:3: not UTF-8 (byte 0xff)"


def test_million_character_tsv_row_is_cut_and_counted(tmp_path, spm_dir, data_dir, caplog):
  tsv = _write(tmp_path / "t.tsv", "sentence\tlabel\nshort row\tpositive\n"
               + "word " * 200_000 + "\tnegative\n")
  with caplog.at_level(logging.WARNING, logger="flaxbert.data"):
    data = pipeline.finetune_data("classification", {"train": tsv}, spm_dir, data_dir,
                                  max_seq_length=32)
  assert data.num_examples("train") == 2
  messages = " ".join(r.getMessage() for r in caplog.records)
  assert f"1 rows cut to max_seq_length (first at {tsv}:3)" in messages


def test_tokenizer_training_input_errors(tmp_path, caplog):
  bad = _write(tmp_path / "bad.txt", b"fine line\nanother fine line\nnot \xfe fine\n")
  with pytest.raises(FlaxbertError) as error:
    train_sentencepiece([bad], 300, str(tmp_path / "tok"))
  assert _one_line(error) == f"{bad}:3: not UTF-8 (byte 0xfe at column 5)"
  text = "".join(f"sentence number {i} of a small corpus.\n" for i in range(300))
  long_lines = _write(tmp_path / "long.txt", text + "y" * 1_000_000 + "\n")
  with caplog.at_level(logging.WARNING, logger="flaxbert.data"):
    train_sentencepiece([long_lines], 300, str(tmp_path / "tok"))
  messages = " ".join(r.getMessage() for r in caplog.records)
  assert f"1 lines skipped: over 65536 bytes (first at {long_lines}:301)" in messages


def test_squad_v2_unanswerable_questions_point_at_cls(tmp_path, spm_dir, data_dir):
  squad = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{
      "context": "A cat is a small animal. A dog is a loyal animal.",
      "qas": [{"id": "q1", "question": "What is a cat?",
               "answers": [{"text": "a small animal", "answer_start": 9}]},
              {"id": "q2", "question": "What is a cow?", "answers": [], "is_impossible": True,
               "plausible_answers": [{"text": "a loyal animal", "answer_start": 34}]}]}]}]}
  path = _write(tmp_path / "qa.json", json.dumps(squad))
  data = pipeline.finetune_data("squad", {"dev": path}, spm_dir, data_dir, max_seq_length=64)
  batch = next(data.batches("dev", batch_size=2, shuffle=False, num_epochs=1,
                            drop_remainder=False, process_index=0, process_count=1))
  by_id = {bytes(i).decode(): row for row, i in enumerate(batch["example_id"])}
  assert batch["start_position"][by_id["q1"]] > 0
  assert batch["start_position"][by_id["q2"]] == batch["end_position"][by_id["q2"]] == 0
