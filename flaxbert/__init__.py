"""flaxbert: BERT-family encoders and Transformer encoder-decoders in JAX/Flax.

Public entry points:
  flaxbert.load(path, head=, num_labels=, labels=)
                               -> (model, params, tokenizer) from a bundle or an HF BERT dir
  flaxbert.pipeline(task, path) -> a callable over texts: classify, regression, ner, qa,
                                  embed, fill-mask
  flaxbert.get_model(name)     -> (model, params) freshly initialised from a preset
  flaxbert.BertConfig          the encoder's frozen config
  flaxbert.FlaxbertError       the one user-facing error type

`load` and `get_model` import their modules on first use, so `import flaxbert` (which every
`flaxbert` command does, `--help` included) does not pay for flax, orbax and the models.
"""

from flaxbert.errors import FlaxbertError
from flaxbert.models.config import BertConfig, PRESETS

__version__ = "0.1.0"


def load(path, *, head=None, num_labels=None, labels=None, seed=0):
  """Loads a bundle directory or an HF BERT checkpoint directory. See `flaxbert.bundle.load`.

  With `head` other than the stored one (say "classification" on a pretraining bundle) the
  encoder weights are kept and a fresh head initialised from `seed`: `num_labels` outputs, or
  one per name in `labels`."""
  from flaxbert.bundle import load as _load
  if head is None and (num_labels is not None or labels is not None):
    raise FlaxbertError("num_labels and labels set a new head's outputs: pass head= too")
  if labels is not None:
    labels = [str(label) for label in labels]
    if num_labels is None:
      num_labels = len(labels)
    elif num_labels != len(labels):
      raise FlaxbertError(f"num_labels={num_labels} but {len(labels)} labels were given")
  return _load(str(path), head=head, num_labels=num_labels, labels=labels, seed=seed)


def pipeline(task, path, **kwargs):
  """A saved model as a function over texts. See `flaxbert.inference.pipeline`."""
  from flaxbert.inference.pipeline import pipeline as _pipeline
  return _pipeline(task, path, **kwargs)


def get_model(name, *, head="pretraining", num_labels=None, seed=0, **overrides):
  """A freshly initialised preset, by GluonNLP name (`bert_12_768_12`, ...). See `models.factory`."""
  from flaxbert.models.factory import get_model as _get_model
  return _get_model(name, head=head, num_labels=num_labels, seed=seed, **overrides)


__all__ = ["BertConfig", "PRESETS", "FlaxbertError", "load", "pipeline", "get_model", "__version__"]
