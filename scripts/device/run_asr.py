"""GPU-machine driver for `asr data` and `asr train` only (the GPU image lacks the server's packages)."""
import argparse
import sys

from asr.data import cli as dcli
from asr.training import cli as train_cli

p = argparse.ArgumentParser(prog="asr")
sub = p.add_subparsers(dest="command", required=True)
dcli.register(sub)
train_cli.register(sub)
a = p.parse_args(sys.argv[1:])
sys.exit(a.func(a))
