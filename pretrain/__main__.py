import sys

from flaxbert.cli import main

sys.exit(main(["pretrain", *sys.argv[1:]]))
