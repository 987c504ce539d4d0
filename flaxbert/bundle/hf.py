"""HF BERT checkpoints <-> flaxbert parameters.

An HF checkpoint directory holds `config.json`, `model.safetensors` (or `pytorch_model.bin`)
and tokenizer files (`tokenizer.json` and/or `vocab.txt`: flaxbert.data.tokenizer reads them).
Tensors are read with numpy (safetensors) and mapped name by name; PyTorch's Linear stores
(out, in) so kernels are transposed, per-layer tensors are stacked on the scanned 'layers'
axis, and query/key/value are fused into one (embed, 3, heads, kv) kernel. All of this is
exact reshaping, so a round trip reproduces every tensor bit for bit.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np

from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json, write_json
from flaxbert.models.config import BertConfig

log = logging.getLogger("flaxbert")

SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"

# Top-level flaxbert parameter groups <-> HF name prefixes of the heads.
_HEAD_GROUPS = {
    "mlm": "cls.predictions.",
    "nsp": "cls.seq_relationship.",
    "classifier": "classifier.",
    "qa_outputs": "qa_outputs.",
}
# Heads whose HF models have no pooler (add_pooling_layer=False).
_POOLERLESS_HEADS = ("tagging", "span_qa")
_ARCHITECTURES = {
    "encoder": "BertModel", "pretraining": "BertForPreTraining",
    "classification": "BertForSequenceClassification",
    "regression": "BertForSequenceClassification",
    "tagging": "BertForTokenClassification", "span_qa": "BertForQuestionAnswering",
}


def is_hf_checkpoint(directory: str) -> bool:
  config = os.path.join(directory, "config.json")
  return os.path.isfile(config) and "model_type" in read_json(config)


def read_hf_config(directory: str) -> BertConfig:
  return BertConfig.from_hf(read_json(os.path.join(directory, "config.json")))


def read_state_dict(directory: str) -> tuple[dict[str, np.ndarray], str]:
  """All tensors of the checkpoint as numpy arrays, and the file they came from."""
  path = os.path.join(directory, SAFETENSORS)
  if os.path.isfile(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
      return load_file(path), path
    except (SafetensorError, OSError, ValueError) as e:
      raise FlaxbertError(f"{path}: not a readable safetensors file ({e})") from None
  path = os.path.join(directory, TORCH_BIN)
  if os.path.isfile(path):
    try:
      import torch
    except ImportError:
      raise FlaxbertError(f"{path}: reading pytorch_model.bin needs torch installed; or "
                          "save the checkpoint as model.safetensors") from None
    try:
      state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
      raise FlaxbertError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}, path
  raise FlaxbertError(f"{directory}: no {SAFETENSORS} or {TORCH_BIN}")


# --- HF names -> flaxbert ------------------------------------------------------------------------

def _encoder_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
  """The HF shape of each encoder tensor, by name without prefix; per-layer tensors by the name
  after `encoder.layer.N.`. PyTorch Linear weights are (out, in)."""
  d, f = config.hidden_size, config.intermediate_size
  shapes = {
      "embeddings.word_embeddings.weight": (config.vocab_size, d),
      "embeddings.position_embeddings.weight": (config.max_position_embeddings, d),
      "embeddings.token_type_embeddings.weight": (config.type_vocab_size, d),
      "pooler.dense.weight": (d, d), "pooler.dense.bias": (d,),
      "attention.output.dense.weight": (d, d), "attention.output.dense.bias": (d,),
      "intermediate.dense.weight": (f, d), "intermediate.dense.bias": (f,),
      "output.dense.weight": (d, f), "output.dense.bias": (d,),
  }
  for w in ("query", "key", "value"):
    shapes[f"attention.self.{w}.weight"], shapes[f"attention.self.{w}.bias"] = (d, d), (d,)
  for norm in ("embeddings.LayerNorm", "attention.output.LayerNorm", "output.LayerNorm"):
    shapes[norm + ".weight"] = shapes[norm + ".bias"] = (d,)
  return shapes


def _encoder_from_hf(sd: dict[str, np.ndarray], p: str, config: BertConfig,
                     source: str) -> dict:
  """flaxbert's 'bert' subtree from HF tensors named with prefix `p` ('' or 'bert.')."""
  n, h, d = config.num_heads, config.head_dim, config.hidden_size
  shapes = _encoder_shapes(config)

  def t(name):
    key = p + name
    if key not in sd:
      # Checkpoints from the original TF conversion name LayerNorm parameters gamma/beta.
      legacy = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
          "LayerNorm.bias", "LayerNorm.beta")
      if legacy not in sd:
        raise FlaxbertError(f"{source}: checkpoint has no tensor {key}")
      key = legacy
    # Checked here, by its HF name, before any transpose, reshape or stacking on the scanned
    # layers axis: those would fail (or silently reinterpret) a wrong-shaped tensor.
    want = shapes[re.sub(r"^encoder\.layer\.\d+\.", "", name)]
    if tuple(np.shape(sd[key])) != want:
      raise FlaxbertError(f"{source}: tensor {key} has shape {tuple(np.shape(sd[key]))} but "
                          f"config.json implies {want}")
    return np.asarray(sd[key], np.float32)

  def ln(name):
    return {"scale": t(name + ".weight"), "bias": t(name + ".bias")}

  def layers(fn):
    return np.stack([fn(f"encoder.layer.{i}.") for i in range(config.num_layers)])

  def qkv_kernel(lp):
    return np.stack([t(f"{lp}attention.self.{w}.weight").T.reshape(d, n, h)
                     for w in ("query", "key", "value")], axis=1)

  def qkv_bias(lp):
    return np.stack([t(f"{lp}attention.self.{w}.bias").reshape(n, h)
                     for w in ("query", "key", "value")])

  return {
      "embeddings": {
          "word_embeddings": {"embedding": t("embeddings.word_embeddings.weight")},
          "position_embeddings": {"embedding": t("embeddings.position_embeddings.weight")},
          "token_type_embeddings": {"embedding": t("embeddings.token_type_embeddings.weight")},
          "layer_norm": ln("embeddings.LayerNorm"),
      },
      "encoder": {"layers": {
          "attention": {
              "qkv": {"kernel": layers(qkv_kernel), "bias": layers(qkv_bias)},
              "out": {"kernel": layers(lambda lp: t(lp + "attention.output.dense.weight")
                                       .T.reshape(n, h, d)),
                      "bias": layers(lambda lp: t(lp + "attention.output.dense.bias"))},
          },
          "attention_norm": {k: layers(lambda lp, k=k: ln(lp + "attention.output.LayerNorm")[k])
                             for k in ("scale", "bias")},
          "intermediate": {"kernel": layers(lambda lp: t(lp + "intermediate.dense.weight").T),
                           "bias": layers(lambda lp: t(lp + "intermediate.dense.bias"))},
          "output": {"kernel": layers(lambda lp: t(lp + "output.dense.weight").T),
                     "bias": layers(lambda lp: t(lp + "output.dense.bias"))},
          "output_norm": {k: layers(lambda lp, k=k: ln(lp + "output.LayerNorm")[k])
                          for k in ("scale", "bias")},
      }},
      # HF's token-classification and QA models have no pooler (add_pooling_layer=False).
      "pooler": ({"dense": {"kernel": t("pooler.dense.weight").T,
                            "bias": t("pooler.dense.bias")}}
                 if p + "pooler.dense.weight" in sd else None),
  }


def _head_from_hf(sd: dict[str, np.ndarray], group: str) -> dict | None:
  """A head group's parameters, or None when the checkpoint does not have that head."""
  if group == "mlm":
    bias = sd.get("cls.predictions.bias", sd.get("cls.predictions.decoder.bias"))
    if bias is None or "cls.predictions.transform.dense.weight" not in sd:
      return None
    return {
        "transform": {"kernel": sd["cls.predictions.transform.dense.weight"].T,
                      "bias": sd["cls.predictions.transform.dense.bias"]},
        "transform_norm": {"scale": sd["cls.predictions.transform.LayerNorm.weight"],
                           "bias": sd["cls.predictions.transform.LayerNorm.bias"]},
        "output_bias": bias,
    }
  prefix = _HEAD_GROUPS[group]
  if prefix + "weight" not in sd:
    return None
  return {"dense": {"kernel": sd[prefix + "weight"].T, "bias": sd[prefix + "bias"]}}


def params_from_hf(sd: dict[str, np.ndarray], config: BertConfig, head: str, abstract: dict,
                   source: str) -> tuple[dict, list[tuple[str, ...]]]:
  """The model's parameters that HF tensors give, checked against the shapes of `abstract`
  (the model's parameter tree, `jax.eval_shape`d).

  Returns the parameters and the paths, such as ('nsp',) or ('bert', 'pooler'), of the groups
  the checkpoint lacks: those are absent from the returned tree, for the caller to
  initialise. Every tensor's shape is checked, so a checkpoint that disagrees with its config
  is reported by name rather than failing deep inside XLA.
  """
  prefix = "bert." if any(k.startswith("bert.") for k in sd) else ""
  loaded = {"bert": _encoder_from_hf(sd, prefix, config, source)}
  missing = []
  if loaded["bert"]["pooler"] is None:
    del loaded["bert"]["pooler"]
    missing.append(("bert", "pooler"))
  for group in abstract:
    if group == "bert":
      continue
    params = _head_from_hf(sd, group) if group in _HEAD_GROUPS else None
    if params is None:
      missing.append((group,))
    else:
      loaded[group] = params
  _check_shapes(loaded, abstract, source, skip=missing)
  return loaded, missing


def uninitialised_heads(missing: list[tuple[str, ...]], head: str) -> list[str]:
  """What a log line names as freshly initialised: the pooler only where the head uses it
  (HF's token-classification and QA models have none to import)."""
  return [path[-1] for path in missing
          if not (path == ("bert", "pooler") and head in _POOLERLESS_HEADS)]


def _check_shapes(loaded, abstract, source: str, path: tuple[str, ...] = (),
                  skip: list[tuple[str, ...]] = ()) -> None:
  """`loaded` has the keys and shapes of `abstract`, but for the subtrees at `skip`."""
  expected = {k for k in abstract if path + (k,) not in skip}
  if set(loaded) != expected:
    raise FlaxbertError(f"{source}: parameters under '{'/'.join(path) or '/'}' are "
                        f"{sorted(loaded)}, expected {sorted(expected)}")
  for key in expected:
    want, got = abstract[key], loaded[key]
    where = "/".join(path + (key,))
    if isinstance(want, dict):
      _check_shapes(got, want, source, path + (key,), skip)
    elif tuple(np.shape(got)) != tuple(want.shape):
      raise FlaxbertError(f"{source}: {where} has shape {tuple(np.shape(got))} but the config "
                          f"implies {tuple(want.shape)}")


# --- flaxbert -> HF names ------------------------------------------------------------------------

def params_to_hf(params: dict, config: BertConfig, head: str) -> dict[str, np.ndarray]:
  """HF tensors for `params`, in the layout of the head's HF architecture."""
  n, h, d = config.num_heads, config.head_dim, config.hidden_size
  p = "" if head == "encoder" else "bert."
  b = jax_to_numpy(params["bert"])
  sd: dict[str, np.ndarray] = {}
  emb = b["embeddings"]
  sd[p + "embeddings.word_embeddings.weight"] = emb["word_embeddings"]["embedding"]
  sd[p + "embeddings.position_embeddings.weight"] = emb["position_embeddings"]["embedding"]
  sd[p + "embeddings.token_type_embeddings.weight"] = emb["token_type_embeddings"]["embedding"]
  sd[p + "embeddings.LayerNorm.weight"] = emb["layer_norm"]["scale"]
  sd[p + "embeddings.LayerNorm.bias"] = emb["layer_norm"]["bias"]
  ly = b["encoder"]["layers"]
  for i in range(config.num_layers):
    lp = f"{p}encoder.layer.{i}."
    for j, w in enumerate(("query", "key", "value")):
      sd[f"{lp}attention.self.{w}.weight"] = ly["attention"]["qkv"]["kernel"][i][:, j] \
          .reshape(d, n * h).T
      sd[f"{lp}attention.self.{w}.bias"] = ly["attention"]["qkv"]["bias"][i][j].reshape(n * h)
    sd[lp + "attention.output.dense.weight"] = ly["attention"]["out"]["kernel"][i] \
        .reshape(n * h, d).T
    sd[lp + "attention.output.dense.bias"] = ly["attention"]["out"]["bias"][i]
    sd[lp + "attention.output.LayerNorm.weight"] = ly["attention_norm"]["scale"][i]
    sd[lp + "attention.output.LayerNorm.bias"] = ly["attention_norm"]["bias"][i]
    sd[lp + "intermediate.dense.weight"] = ly["intermediate"]["kernel"][i].T
    sd[lp + "intermediate.dense.bias"] = ly["intermediate"]["bias"][i]
    sd[lp + "output.dense.weight"] = ly["output"]["kernel"][i].T
    sd[lp + "output.dense.bias"] = ly["output"]["bias"][i]
    sd[lp + "output.LayerNorm.weight"] = ly["output_norm"]["scale"][i]
    sd[lp + "output.LayerNorm.bias"] = ly["output_norm"]["bias"][i]
  if head not in _POOLERLESS_HEADS:
    sd[p + "pooler.dense.weight"] = b["pooler"]["dense"]["kernel"].T
    sd[p + "pooler.dense.bias"] = b["pooler"]["dense"]["bias"]
  for group, prefix in _HEAD_GROUPS.items():
    if group not in params:
      continue
    g = jax_to_numpy(params[group])
    if group == "mlm":
      sd["cls.predictions.transform.dense.weight"] = g["transform"]["kernel"].T
      sd["cls.predictions.transform.dense.bias"] = g["transform"]["bias"]
      sd["cls.predictions.transform.LayerNorm.weight"] = g["transform_norm"]["scale"]
      sd["cls.predictions.transform.LayerNorm.bias"] = g["transform_norm"]["bias"]
      sd["cls.predictions.bias"] = g["output_bias"]
      # The decoder is tied to the word embeddings; HF expects the tensor to be present.
      sd["cls.predictions.decoder.weight"] = emb["word_embeddings"]["embedding"]
    else:
      sd[prefix + "weight"] = g["dense"]["kernel"].T
      sd[prefix + "bias"] = g["dense"]["bias"]
  return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


def jax_to_numpy(tree):
  import jax
  return jax.tree.map(lambda x: np.asarray(x), tree)


def write_hf_checkpoint(directory: str, params: dict, config: BertConfig, head: str,
                        labels: list[str] | None = None) -> None:
  """Writes config.json + model.safetensors (tokenizer files are written by the caller)."""
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  hf_config = config.to_hf()
  hf_config["architectures"] = [_ARCHITECTURES[head]]
  if labels:
    hf_config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    hf_config["label2id"] = {label: i for i, label in enumerate(labels)}
  if head == "regression":
    hf_config["num_labels"], hf_config["problem_type"] = 1, "regression"
  write_json(os.path.join(directory, "config.json"), hf_config)
  save_file(params_to_hf(params, config, head), os.path.join(directory, SAFETENSORS))


def head_of_hf_checkpoint(hf_config: dict, sd: dict[str, np.ndarray]) -> str:
  """The head an HF checkpoint carries: from `architectures`, else from its tensor names."""
  by_arch = {v: k for k, v in _ARCHITECTURES.items() if k != "regression"}
  by_arch["BertForMaskedLM"] = "pretraining"
  for arch in hf_config.get("architectures") or ():
    if arch in by_arch:
      head = by_arch[arch]
      if head == "classification" and hf_config.get("problem_type") == "regression":
        return "regression"
      return head
  if "cls.predictions.transform.dense.weight" in sd:
    return "pretraining"
  if "qa_outputs.weight" in sd:
    return "span_qa"
  if "classifier.weight" in sd:
    return "classification"
  return "encoder"


def hf_labels(hf_config: dict, sd: dict[str, np.ndarray]) -> list[str] | None:
  """Label names of a classifier checkpoint, in output order."""
  if "classifier.weight" not in sd:
    return None
  count = sd["classifier.weight"].shape[0]
  id2label = hf_config.get("id2label") or {}
  return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count)]
