"""Gather several runs' lfw_results.json into the earlier port's README tables.

    python code/gather_results.py log/run1 log/run2 log/run3 [--names A B C] [--output results.md]

Each argument is a run folder (holding lfw_results.json and train.py's config.yaml) or a results file.
Rows are named `alpha=<alpha>/beta=<beta>` from each run's config.yaml (runs sharing those get the
settings they differ in appended), or by --names. Prints (and with --output writes) the per-fold LFW
accuracy table, the mean minimum class-center distance table, the .bin set accuracies if any, and the
last accuracy each run logged on its val_targets sets while it trained (metrics.jsonl's val/<set>; a run
folder with those and no results file yet is listed in that table alone). An existing --output file is
not replaced without --overwrite.
"""
from __future__ import annotations

import sys

from ..base.atomic import atomic_write_text
from ..base.cli import new_parser, run_command
from ..base.paths import ensure_writable, refuse_overwrite
from ..tools.report import gather_markdown, load_run

NAME = "gather_results"


def build_parser():
    parser = new_parser(NAME, __doc__)
    parser.add_argument("runs", nargs="+", help="run folders or lfw_results.json files")
    parser.add_argument("--names", nargs="+", help="one row name per run (default: alpha/beta from config.yaml)")
    parser.add_argument("--output", help="markdown file to write as well (default: none, print only)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    return parser


def run(args, parser) -> int:
    if args.names is not None and len(args.names) != len(args.runs):
        parser.error(f"--names: {len(args.names)} names for {len(args.runs)} runs")
    if args.output:
        refuse_overwrite(args.output, args.overwrite)
        ensure_writable(args.output)
    markdown = gather_markdown([load_run(run) for run in args.runs], args.names)
    print(markdown, end="")
    if args.output:
        atomic_write_text(args.output, markdown)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv)
