"""flaxbert.pipeline over fine-tuned task bundles: the same predictions as `flaxbert predict`
on the same inputs (length-bucketed batches change nothing), scores that are the
probabilities predict writes, character offsets into the texts as given; and, on the real
MiniLM's SQuAD v2.0 outputs, the best null threshold `evaluate --null-odds` reports is the one
whose predictions score best_exact / best_f1."""

import json
import os

import numpy as np
import pytest

from conftest import SHARED_DATA, call_cli
from flaxbert import bundle as bundle_lib
from flaxbert.errors import FlaxbertError
from flaxbert.inference import embed
from flaxbert.inference.pipeline import PIPELINES, pipeline
from flaxbert.tasks import classify, ner, squad

NER_LABELS = ["O", "B-person", "I-person", "B-geo-loc", "I-geo-loc", "B-company"]


def _bundle(init, path, head, labels, settings, scale=20.0, centre_on=None):
  """A task bundle of `init` with a fresh head, its weights scaled up so that the random
  head's predictions differ from row to row, and the finetune.json predict reads. A random
  model's pooled vectors differ little from text to text: `centre_on` (texts) sets the
  classifier's bias to cancel their mean, so that the labels do differ."""
  bundle = bundle_lib.load(init, head=head, num_labels=len(labels) if labels else None,
                           labels=labels)
  bundle.labels = labels
  dense = bundle.params[next(k for k in bundle.params if k != "bert")]["dense"]
  dense["kernel"] = dense["kernel"] * scale
  if centre_on:
    rows = embed.encode_rows(bundle.tokenizer, centre_on, settings["max_seq_length"])
    _, pooled = embed.embed_arrays(bundle, *rows, 32, show_progress=False)
    dense["bias"] = -(pooled.mean(axis=0) @ dense["kernel"])
  bundle_lib.replace(str(path), bundle, files={"finetune.json": settings})
  return str(path)


def _rows(name, n):
  """The first n rows' texts of a shared classification TSV: (text_a, text_b or None)."""
  table = classify.read_table(os.path.join(SHARED_DATA, name), need_label=True)
  a, b = table.texts
  return list(zip(a[:n], b[:n] if b is not None else [None] * n))


@pytest.fixture(scope="module")
def bundles(tiny_hf, tmp_path_factory):
  root = tmp_path_factory.mktemp("task_bundles")
  return {
      "classify": _bundle(tiny_hf, root / "classify", "classification",
                          ["negative", "neutral", "positive"],
                          {"task": "classify", "max_seq_length": 48},
                          centre_on=_rows("sentiment/dev.tsv", 30) +
                          _rows("wsd_pairs/dev.tsv", 30)),
      "regression": _bundle(tiny_hf, root / "regression", "regression", None,
                            {"task": "regression", "max_seq_length": 48, "regression": True}),
      "ner": _bundle(tiny_hf, root / "ner", "tagging", NER_LABELS,
                     {"task": "ner", "max_seq_length": 40}),
      "qa": _bundle(tiny_hf, root / "qa", "span_qa", None, {"task": "qa", "max_seq_length": 64}),
  }


def _head(name, lines, tmp_path):
  path = tmp_path / os.path.basename(name)
  with open(os.path.join(SHARED_DATA, name), encoding="utf-8") as f:
    path.write_text("".join(next(f) for _ in range(lines)), encoding="utf-8")
  return path


def _predict(bundle, task, source, output, *extra):
  rc, out, err = call_cli("predict", bundle, "--task", task, "--input", source, "--output",
                          output, "--quiet", *extra)
  assert rc == 0, err[-3000:]


def test_classify_and_regression_equal_predict(bundles, tmp_path):
  run = pipeline("classify", bundles["classify"], batch_size=8)
  for name in ("sentiment/dev.tsv", "wsd_pairs/dev.tsv"):   # sentences, then sentence pairs
    source = _head(name, 30, tmp_path)
    _predict(bundles["classify"], "classify", source, tmp_path / "pred.tsv")
    table = classify.read_table(str(tmp_path / "pred.tsv"), need_label=True)
    a, b = table.texts
    texts = a if b is None else list(zip(a, b))
    got = run(texts)
    assert [g["label"] for g in got] == table.column("prediction")
    assert len(set(table.column("prediction"))) > 1, "a weak test: one label for every row"
    for label in ("negative", "neutral", "positive"):
      written = np.array(table.column(f"prob_{label}"), float)
      np.testing.assert_allclose([g["scores"][label] for g in got], written, rtol=2e-5)
    for g in got:
      assert g["score"] == g["scores"][g["label"]] == max(g["scores"].values())
      assert sum(g["scores"].values()) == pytest.approx(1.0)
  # One text in, one result out; a regression bundle gives its value.
  single = run(texts[0][0])
  assert single == run([texts[0][0]])[0] and set(single) == {"label", "score", "scores"}
  _predict(bundles["regression"], "regression", source, tmp_path / "reg.tsv")
  values = classify.read_table(str(tmp_path / "reg.tsv"), need_label=True).column("prediction")
  got = pipeline("classify", bundles["regression"], batch_size=8)(texts)   # classify serves it
  np.testing.assert_allclose([g["score"] for g in got], np.array(values, float), rtol=1e-5)
  assert all(set(g) == {"score"} for g in got)


def test_ner_spans_equal_predict(bundles, tmp_path):
  source = tmp_path / "dev.conll"
  text = open(os.path.join(SHARED_DATA, "ner", "dev.conll"), encoding="utf-8").read()
  source.write_text("\n\n".join(text.split("\n\n")[:16]) + "\n", encoding="utf-8")
  _predict(bundles["ner"], "ner", source, tmp_path / "pred.conll")
  written = [json.loads(line) for line in open(tmp_path / "pred.conll.spans.jsonl")]
  sentences = ner.read_conll(str(source), need_tags=False)
  assert [w["text"] for w in written] == [" ".join(s.words) for s in sentences]
  # the spans agree with the CoNLL tags predict wrote
  _, tags = ner.read_predictions(str(tmp_path / "pred.conll"), str(source))
  for w, sentence, sentence_tags in zip(written, sentences, tags):
    assert [e["text"] for e in w["entities"]] == [
        e["text"] for e in ner.entity_spans(sentence.words, sentence_tags,
                                            [0.0] * len(sentence_tags))]
  assert sum(len(w["entities"]) for w in written) > 5
  run = pipeline("ner", bundles["ner"], batch_size=4)
  got = run([w["text"] for w in written])
  for spans, w in zip(got, written):
    assert [{**s, "score": pytest.approx(s["score"], rel=1e-5)} for s in spans] \
        == w["entities"]
  # Offsets index the text as given, whatever the whitespace between its words.
  messy = ["  " + "\t".join(s.words[:3]) + "\n " + "   ".join(s.words[3:])
           for s in sentences]
  for spans, plain, text in zip(run(messy), got, messy):
    assert [s["text"].split() for s in spans] == [s["text"].split() for s in plain]
    assert all(text[s["start"]:s["end"]] == s["text"] for s in spans)
  assert run("") == [] and run([]) == []


def _squad_v2(path, paragraphs=6):
  """The shared SQuAD v1.1 dev file's first paragraphs, two questions each, plus the next
  paragraph's first question as an unanswerable one (a question about another text)."""
  data = json.load(open(os.path.join(SHARED_DATA, "qa", "dev.json"), encoding="utf-8"))
  flat = [p for article in data["data"] for p in article["paragraphs"]][:paragraphs + 1]
  kept = []
  for here, there in zip(flat, flat[1:]):
    borrowed = {**there["qas"][0], "id": there["qas"][0]["id"] + "_x", "answers": [],
                "is_impossible": True}
    kept.append({"context": here["context"], "qas": here["qas"][:2] + [borrowed]})
  path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": kept}]}),
                  encoding="utf-8")
  return [(q["id"], q["question"], p["context"]) for p in kept for q in p["qas"]]


def test_qa_best_threshold_on_model_output_and_pipeline(minilm_dir, tmp_path):
  """The real MiniLM encoder (with a fresh span head) on SQuAD v2.0 questions: predict with
  every question answered, evaluate the null odds it wrote: answering "" above the thresholds
  found scores best_exact and best_f1, and predict at that threshold answers just so. The
  pipeline gives predict's answers and n-best probabilities."""
  path = _bundle(minilm_dir, tmp_path / "qa", "span_qa", None,
                 {"task": "qa", "max_seq_length": 96, "doc_stride": 48, "max_query_length": 24,
                  "null_threshold": 0.0}, scale=1.0)
  gold = tmp_path / "dev.json"
  questions = _squad_v2(gold)
  truth = {q["id"]: [a["text"] for a in q["answers"]] for p in json.load(open(gold))["data"][0][
      "paragraphs"] for q in p["qas"]}

  _predict(path, "qa", gold, tmp_path / "pred.json", "--null-threshold", 1e9)
  answers = json.load(open(tmp_path / "pred.json"))
  odds = json.load(open(tmp_path / "null_odds.json"))
  nbest = json.load(open(tmp_path / "nbest_predictions.json"))
  rc, out, err = call_cli("evaluate", "--task", "qa", "--predictions", tmp_path / "pred.json",
                          "--gold", gold, "--null-odds", tmp_path / "null_odds.json")
  assert rc == 0, err
  scores = json.loads(out)
  assert set(odds) == set(nbest) == set(answers) == set(truth)
  assert all(answers.values()), "with a huge threshold every question is answered"
  assert len(set(odds.values())) == len(odds)   # no ties: each threshold answers one more
  first = {qid: next(e for e in entries if e["text"]) for qid, entries in nbest.items()}
  for qid, entries in nbest.items():
    assert first[qid]["text"] == answers[qid] and "" in [e["text"] for e in entries]
    assert sum(e["probability"] for e in entries) == pytest.approx(1.0)
  assert (scores["HasAns_total"], scores["NoAns_total"], scores["total"]) == (12, 6, 18)
  nothing = 100 * 6 / 18   # the score of answering every question ""
  assert scores["best_f1"] >= max(scores["f1"], nothing)
  for metric, key in (("f1", "f1"), ("exact", "exact_match")):
    best, threshold = scores[f"best_{metric}"], scores[f"best_{metric}_thresh"]
    if best == nothing and threshold == 0.0:   # as the official script says "answer none"
      threshold = -np.inf
    at = {q: "" if odds[q] > threshold else answers[q] for q in answers}
    assert squad.score(truth, at)[key] == pytest.approx(best, rel=1e-12), (metric, threshold)
    if metric == "f1":
      _predict(path, "qa", gold, tmp_path / "at.json", "--null-threshold",
               scores["best_f1_thresh"])
      assert json.load(open(tmp_path / "at.json")) == at

  # The pipeline at a threshold between the odds (a setting over the bundle's): predict's
  # answers, "" (at offsets 0, 0) above it.
  middle = float(np.median(list(odds.values())))
  got = pipeline("qa", path, batch_size=8, null_threshold=middle)(
      [(q, c) if i % 2 else {"question": q, "context": c}
       for i, (_, q, c) in enumerate(questions)])
  assert 0 < sum(1 for g in got if g["answer"]) < len(got)
  for result, (qid, _, context) in zip(got, questions):
    chosen = first[qid] if odds[qid] <= middle else next(e for e in nbest[qid] if not e["text"])
    assert result["answer"] == chosen["text"]
    assert (result["start"], result["end"]) == (chosen["start"], chosen["end"])
    assert context[result["start"]:result["end"]] == result["answer"]
    assert result["score"] == pytest.approx(chosen["probability"], rel=1e-4)


def test_pipeline_errors(bundles, tmp_path):
  with pytest.raises(FlaxbertError) as error:
    pipeline("sentiment", bundles["classify"])
  assert str(error.value) == (f"unknown pipeline task 'sentiment' (known: "
                              f"{', '.join(PIPELINES)})")
  with pytest.raises(FlaxbertError, match="unknown setting 'beam' for the classify pipeline"):
    pipeline("classify", bundles["classify"], beam=4)
  with pytest.raises(FlaxbertError, match="a 'classification' bundle cannot predict 'ner'"):
    pipeline("ner", bundles["classify"])
  with pytest.raises(FlaxbertError, match="no such bundle"):
    pipeline("classify", str(tmp_path / "nowhere"))
  with pytest.raises(FlaxbertError, match="batch_size must be positive"):
    pipeline("classify", bundles["classify"], batch_size=0)
  run = pipeline("classify", bundles["classify"])
  with pytest.raises(FlaxbertError, match=r"input 1: expected a text or a \(text_a, text_b\)"):
    run(["fine", 3])
  with pytest.raises(FlaxbertError, match=r"input 0: expected a \(question, context\) pair"):
    pipeline("qa", bundles["qa"])("a question without its context")
