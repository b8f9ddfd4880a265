"""Gather several runs' lfw_results.json into the earlier port's README tables.

    python code/gather_results.py log/run1 log/run2 log/run3 [--names A B C] [--output results.md]

Each argument is a run folder (holding lfw_results.json and train.py's config.yaml) or a results file.
Rows are named `alpha=<alpha>/beta=<beta>` from each run's config.yaml (runs sharing those get the
settings they differ in appended), or by --names. Prints (and with --output writes) the per-fold LFW
accuracy table, the mean minimum class-center distance table, and the .bin set accuracies if any. An
existing --output file is not replaced without --overwrite. Errors are one line (`--debug`: with the
traceback).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from uniformface.cli import add_debug_flag, ensure_writable, refuse_overwrite, run_script  # noqa: E402
from uniformface.report import gather_markdown, load_run  # noqa: E402


def main(argv=None) -> int:
    return run_script(_main, argv)


def _main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders or lfw_results.json files")
    parser.add_argument("--names", nargs="+", help="one row name per run (default: alpha/beta from config.yaml)")
    parser.add_argument("--output", help="markdown file to write as well")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.names is not None and len(args.names) != len(args.runs):
        parser.error(f"--names: {len(args.names)} names for {len(args.runs)} runs")
    if args.output:
        refuse_overwrite(args.output, args.overwrite)
        ensure_writable(args.output)
    markdown = gather_markdown([load_run(run) for run in args.runs], args.names)
    print(markdown, end="")
    if args.output:
        from uniformface.checkpoint import atomic_write_text  # imports torch: only when writing

        atomic_write_text(args.output, markdown)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
