"""Gather several runs' lfw_results.json into the earlier port's README tables.

The script's body is uniformface/commands/gather_results.py; `python code/gather_results.py --help` describes it.
"""
import sys

from uniformface.commands.gather_results import main

if __name__ == "__main__":
    sys.exit(main())
