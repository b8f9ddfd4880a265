"""`make demo`: the whole pipeline on the project's generated toy face set, in minutes on a CPU.

The script's body is uniformface/commands/demo.py; `python code/demo.py --help` describes it.
"""
import sys

from uniformface.commands.demo import main

if __name__ == "__main__":
    sys.exit(main())
