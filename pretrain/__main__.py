import sys

from flaxbert.cli import entry

entry(["pretrain", *sys.argv[1:]])
