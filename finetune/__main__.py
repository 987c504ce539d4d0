import sys

from flaxbert.cli import entry

entry(["finetune", *sys.argv[1:]])
