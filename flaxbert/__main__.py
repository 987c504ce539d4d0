"""`python -m flaxbert ...` = `flaxbert ...`."""
from flaxbert.cli import entry

entry()
