"""Generate the toy face set used by `make demo`: a smoke test of every stage, not a benchmark.

The script's body is uniformface/commands/make_toy_data.py; `python code/make_toy_data.py --help` describes it.
"""
import sys

from uniformface.commands.make_toy_data import main

if __name__ == "__main__":
    sys.exit(main())
