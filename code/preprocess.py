"""Detect and align faces: DATASET/<identity>/<file> -> OUTPUT_DIR/<identity>/<file> (same names).

The script's body is uniformface/commands/preprocess.py; `python code/preprocess.py --help` describes it.
"""
import sys

from uniformface.commands.preprocess import main

if __name__ == "__main__":
    sys.exit(main())
