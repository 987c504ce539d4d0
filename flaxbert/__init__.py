"""flaxbert: BERT-family encoders and Transformer encoder-decoders in JAX/Flax.

Public entry points:
  flaxbert.load(path)          -> (model, params, tokenizer) from a bundle or an HF BERT dir
  flaxbert.get_model(name)     -> (model, params) freshly initialised from a preset
  flaxbert.BertConfig          the encoder's frozen config
  flaxbert.FlaxbertError       the one user-facing error type

`load` and `get_model` import their modules on first use, so `import flaxbert` (which every
`flaxbert` command does, `--help` included) does not pay for flax, orbax and the models.
"""

from flaxbert.errors import FlaxbertError
from flaxbert.models.config import BertConfig, PRESETS

__version__ = "0.1.0"


def load(path, *, head=None):
  """Loads a bundle directory or an HF BERT checkpoint directory. See `flaxbert.bundle.load`."""
  from flaxbert.bundle import load as _load
  return _load(path, head=head)


def get_model(name, *, head="pretraining", num_labels=None, seed=0, **overrides):
  """A freshly initialised preset, by GluonNLP name (`bert_12_768_12`, ...). See `models.factory`."""
  from flaxbert.models.factory import get_model as _get_model
  return _get_model(name, head=head, num_labels=num_labels, seed=seed, **overrides)


__all__ = ["BertConfig", "PRESETS", "FlaxbertError", "load", "get_model", "__version__"]
