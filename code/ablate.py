"""Train and test every setting of a grid, then print the earlier port's result tables.

The script's body is uniformface/commands/ablate.py; `python code/ablate.py --help` describes it.
"""
import sys

from uniformface.commands.ablate import main

if __name__ == "__main__":
    sys.exit(main())
