"""A bundle's inference function as an ONNX graph for onnxruntime, float32 or dynamic int8.

Why a second route next to the StableHLO export (flaxbert.inference.serving): on CPUs, XLA's
int8 x int8 -> int32 matmul (YNNPACK) is only ~1.5x its float32 one at BERT's shapes, so the
int8 StableHLO export gains ~1.2-1.3x end to end, while onnxruntime's dynamic int8 matmuls
(uint8 activations x int8 weights, MLAS's VNNI kernels) run MiniLM 1.5-1.8x faster than that
(bench/inference_latency.py). This graph is built from the bundle's parameters with
`onnx.helper` -- no torch, no transformers -- and computes what the head's Linen model
computes (embeddings, post-LN layers with exact-erf GELU, tanh pooler, the head's dense
layer); `int8=True` then runs onnxruntime.quantization.quantize_dynamic on it (int8
per-channel weights for the dense layers; attention's own matmuls stay float32, as in the
StableHLO export).

Inputs input_ids, segment_ids, input_mask: int32 [batch, sequence] (symbolic); outputs as the
head's model returns them. Heads: encoder, classification, regression, tagging, span_qa.
"""

from __future__ import annotations

import logging
import os
import tempfile

import jax
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from flaxbert.errors import FlaxbertError
from flaxbert.inference import quantize
from flaxbert.inference.serving_function import unstack_layers

OPSET = 17   # LayerNormalization
HEADS = ("encoder", "classification", "regression", "tagging", "span_qa")


class _Graph:
  def __init__(self, flat: dict):
    self.flat, self.nodes, self.inits, self.count = flat, [], [], 0

  def const(self, name: str, value) -> str:
    if any(init.name == name for init in self.inits):
      name = f"{name}_{len(self.inits)}"   # a second constant of that name
    self.inits.append(numpy_helper.from_array(np.asarray(value), name))
    return name

  def param(self, path: str, shape=None) -> str:
    value = np.asarray(self.flat[path], np.float32)
    return self.const(path, value if shape is None else value.reshape(shape))

  def op(self, op_type: str, *inputs, **attrs) -> str:
    self.count += 1
    out = f"{op_type.lower()}_{self.count}"
    self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
    return out

  def dense(self, x: str, prefix: str, d_in: int) -> str:
    kernel = self.flat[prefix + "/kernel"]
    w = self.param(prefix + "/kernel", (d_in, -1))
    b = self.param(prefix + "/bias", (int(np.size(kernel)) // d_in,))
    return self.op("Add", self.op("MatMul", x, w), b)

  def layer_norm(self, x: str, prefix: str, eps: float) -> str:
    return self.op("LayerNormalization", x, self.param(prefix + "/scale"),
                   self.param(prefix + "/bias"), axis=-1, epsilon=eps)


def _activation(g: _Graph, x: str, name: str) -> str:
  """flaxbert.models.bert.activation: exact-erf GELU, its tanh approximation, or ReLU."""
  if name == "relu":
    return g.op("Relu", x)
  if name != "gelu":   # gelu_new, gelu_pytorch_tanh: the tanh approximation
    inner = g.op("Mul", g.op("Add", x, g.op("Mul", g.const(f"c{g.count}", np.float32(0.044715)),
                                            g.op("Mul", x, g.op("Mul", x, x)))),
                 g.const(f"k{g.count}", np.float32(np.sqrt(2 / np.pi))))
    half = g.op("Mul", x, g.const(f"h{g.count}", np.float32(0.5)))
    return g.op("Mul", half, g.op("Add", g.op("Tanh", inner), g.const(f"o{g.count}",
                                                                      np.float32(1.0))))
  erf = g.op("Erf", g.op("Div", x, g.const(f"s{g.count}", np.float32(np.sqrt(2.0)))))
  half = g.op("Mul", x, g.const(f"h{g.count}", np.float32(0.5)))
  return g.op("Mul", half, g.op("Add", erf, g.const(f"o{g.count}", np.float32(1.0))))


def check_supported(cfg, head: str) -> None:
  if head not in HEADS:
    raise FlaxbertError(f"the ONNX export has no {head!r} head (it has {', '.join(HEADS)})")


def build_graph(cfg, head: str, flat: dict) -> onnx.ModelProto:
  """The ONNX model of `head` on parameters `flat` in the per-layer form of
  serving_function.unstack_layers."""
  check_supported(cfg, head)
  g = _Graph(flat)
  d, n, h = cfg.hidden_size, cfg.num_heads, cfg.head_dim
  ids, segments, mask = "input_ids", "segment_ids", "input_mask"
  # Embeddings: word + position (0..s-1) + token type, LayerNorm.
  emb = "bert/embeddings/"
  length = g.op("Gather", g.op("Shape", ids), g.const("one", np.int64(1)), axis=0)
  positions = g.op("Range", g.const("zero", np.int64(0)), length, g.const("step", np.int64(1)))
  x = g.op("Add", g.op("Add", g.op("Gather", g.param(emb + "word_embeddings/embedding"), ids),
                       g.op("Gather", g.param(emb + "position_embeddings/embedding"),
                            positions)),
           g.op("Gather", g.param(emb + "token_type_embeddings/embedding"), segments))
  x = g.layer_norm(x, emb + "layer_norm", cfg.layer_norm_eps)
  # Padding keys get a large negative logit: B x 1 x 1 x S.
  keep = g.op("Cast", mask, to=TensorProto.FLOAT)
  bias = g.op("Mul", g.op("Sub", g.const("ones", np.float32(1.0)), keep),
              g.const("big_neg", np.float32(-1e30)))
  bias = g.op("Unsqueeze", bias, g.const("axes_1_2", np.array([1, 2], np.int64)))
  scale = g.const("attention_scale", np.float32(h ** -0.5))
  for i in range(cfg.num_layers):
    p = f"bert/encoder/layers/{i}/"
    qkv = g.op("Reshape", g.dense(x, p + "attention/qkv", d),
               g.const(f"qkv_shape{i}", np.array([0, 0, 3, n, h], np.int64)))
    qkv = g.op("Transpose", qkv, perm=[2, 0, 3, 1, 4])   # 3 x B x N x S x H
    q, k, v = (g.op("Gather", qkv, g.const(f"part{i}_{j}", np.int64(j)), axis=0)
               for j in range(3))
    logits = g.op("Add", g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])),
                              scale), bias)
    attended = g.op("MatMul", g.op("Softmax", logits, axis=-1), v)       # B x N x S x H
    attended = g.op("Reshape", g.op("Transpose", attended, perm=[0, 2, 1, 3]),
                    g.const(f"merge_shape{i}", np.array([0, 0, d], np.int64)))
    x = g.layer_norm(g.op("Add", x, g.dense(attended, p + "attention/out", d)),
                     p + "attention_norm", cfg.layer_norm_eps)
    ffn = _activation(g, g.dense(x, p + "intermediate", d), cfg.hidden_act)
    x = g.layer_norm(g.op("Add", x, g.dense(ffn, p + "output", cfg.intermediate_size)),
                     p + "output_norm", cfg.layer_norm_eps)
  cls = g.op("Gather", x, g.const("first", np.int64(0)), axis=1)
  pooled = g.op("Tanh", g.dense(cls, "bert/pooler/dense", d))
  # name -> (value, shape)
  if head == "encoder":
    outputs = {"hidden": (x, ["batch", "sequence", d]), "pooled": (pooled, ["batch", d])}
  elif head in ("classification", "regression"):
    labels = int(np.size(flat["classifier/dense/bias"]))
    outputs = {"logits": (g.dense(pooled, "classifier/dense", d), ["batch", labels])}
  elif head == "tagging":
    labels = int(np.size(flat["classifier/dense/bias"]))
    outputs = {"logits": (g.dense(x, "classifier/dense", d), ["batch", "sequence", labels])}
  else:
    both = g.dense(x, "qa_outputs/dense", d)
    outputs = {name: (g.op("Gather", both, g.const(f"qa{j}", np.int64(j)), axis=2),
                      ["batch", "sequence"])
               for j, name in enumerate(("start_logits", "end_logits"))}
  for name, (value, _) in outputs.items():
    g.nodes.append(helper.make_node("Identity", [value], [name], name=f"out_{name}"))
  token = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32,  # noqa: E731
                                                     ["batch", "sequence"])
  graph = helper.make_graph(g.nodes, f"flaxbert_{head}", [token(ids), token(segments),
                                                          token(mask)],
                            [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
                             for name, (_, shape) in outputs.items()], g.inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
  model.ir_version = 8
  onnx.checker.check_model(model)
  return model


def export_onnx(bundle, path: str, *, int8: bool = False) -> str:
  """Writes the ONNX model of `bundle` to `path`; with `int8`, dynamically quantized (int8
  per-channel weights of every dense layer, activations quantized per call)."""
  flat = unstack_layers(quantize.flatten(jax.tree.map(np.asarray, bundle.params)),
                        bundle.config.num_layers)
  model = build_graph(bundle.config, bundle.head, flat)
  if not int8:
    onnx.save(model, path)
    return path
  weights = {init.name for init in model.graph.initializer}
  attention = [node.name for node in model.graph.node
               if node.op_type == "MatMul" and node.input[1] not in weights]
  with tempfile.TemporaryDirectory() as tmp:
    plain = os.path.join(tmp, "float.onnx")
    onnx.save(model, plain)
    # onnxruntime's quantizer logs a line per unquantized tensor and advice on the root
    # logger at INFO and WARNING; the export is checked by its tests and bench, not by those.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
      quantize_dynamic(plain, path, weight_type=QuantType.QInt8, per_channel=True,
                       nodes_to_exclude=attention)
    finally:
      logging.disable(previous)
  return path
