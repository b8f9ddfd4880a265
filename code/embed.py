"""A folder's face embeddings.

The script's body is uniformface/commands/embed.py; `python code/embed.py --help` describes it.
"""
import sys

from uniformface.commands.embed import main

if __name__ == "__main__":
    sys.exit(main())
