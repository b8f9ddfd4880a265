"""Draw the training curves of several runs side by side (from their metrics.jsonl).

The script's body is uniformface/commands/plot_runs.py; `python code/plot_runs.py --help` describes it.
"""
import sys

from uniformface.commands.plot_runs import main

if __name__ == "__main__":
    sys.exit(main())
