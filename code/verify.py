"""Are two photos the same person?

The script's body is uniformface/commands/verify.py; `python code/verify.py --help` describes it.
"""
import sys

from uniformface.commands.verify import main

if __name__ == "__main__":
    sys.exit(main())
