"""Draw trained networks' classes on the unit sphere, side by side.

The script's body is uniformface/commands/plot_sphere.py; `python code/plot_sphere.py --help` describes it.
"""
import sys

from uniformface.commands.plot_sphere import main

if __name__ == "__main__":
    sys.exit(main())
