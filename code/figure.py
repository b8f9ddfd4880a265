"""`make figure`: UniformFace's hypersphere picture on the toy set, with and without the uniform loss.

The script's body is uniformface/commands/figure.py; `python code/figure.py --help` describes it.
"""
import sys

from uniformface.commands.figure import main

if __name__ == "__main__":
    sys.exit(main())
