"""Convert a training set for faster loading: decode it once into a packed memory-mapped set, or write
an aligned folder as an insightface-style `.rec` + `.idx`.

The script's body is uniformface/commands/pack_dataset.py; `python code/pack_dataset.py --help` describes it.
"""
import sys

from uniformface.commands.pack_dataset import main

if __name__ == "__main__":
    sys.exit(main())
