"""Public alias: `flaxbert.serving.load(DIR)` runs a directory written by
`flaxbert export BUNDLE --serving --out DIR` with jax alone (no flaxbert model code)."""

from flaxbert.inference.serving import ServingModel, export_serving, load

__all__ = ["ServingModel", "export_serving", "load"]
