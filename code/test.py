"""Verification accuracy of a trained model (SphereFace's evaluation.m; docs/CLI.md): LFW 10-fold, or insightface `.bin` sets.

The script's body is uniformface/commands/test.py; `python code/test.py --help` describes it.
"""
import sys

from uniformface.commands.test import main

if __name__ == "__main__":
    sys.exit(main())
