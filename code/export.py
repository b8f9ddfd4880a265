"""Export a trained embedding network to ONNX and check it against PyTorch with onnxruntime.

The script's body is uniformface/commands/export.py; `python code/export.py --help` describes it.
"""
import sys

from uniformface.commands.export import main

if __name__ == "__main__":
    sys.exit(main())
