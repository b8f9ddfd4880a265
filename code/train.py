"""Train SphereFace + A-Softmax + UniformFace's uniform loss from a YAML config.

The script's body is uniformface/commands/train.py; `python code/train.py --help` describes it.
"""
import sys

from uniformface.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
