"""Draw the training curves of several runs side by side, without TensorBoard.

    python code/plot_runs.py log/run1 log/run2 ... [--output curves.png] [--window 5] [--names A B ...]

Each argument is a run folder (or its metrics.jsonl). One panel each for the training accuracy, the
cross-entropy, the uniform loss, A-Softmax's lambda, the learning rate, the mean nearest-center angle and,
when a run logs them (eval_every), the LFW accuracy during training and that of each val_targets `.bin` set
(`val/<set>`, one panel a set); one line per run, named as the result tables name its row
(`alpha=1.0/beta=0.5`, from the run's config.yaml) unless --names. --window averages the batch statistics
(accuracy, cross-entropy, uniform loss) over that many logged points. A run still training, or resumed,
draws as it stands: an incomplete last line is left out, and the records a resume went back over are
replaced by the resumed ones. The PNG is written atomically; an existing file is not replaced without
--overwrite. A metrics file that cannot be read is an error naming it (and its line).
"""
from __future__ import annotations

from ..base.cli import check_png_output, new_parser, run_command

NAME = "plot_runs"


def build_parser():
    parser = new_parser(NAME, __doc__)
    parser.add_argument("runs", nargs="+", help="run folders (or their metrics.jsonl)")
    parser.add_argument("--output", default="curves.png", help="PNG to write")
    parser.add_argument("--names", nargs="+", help="one line label per run (default: alpha/beta from config.yaml)")
    parser.add_argument("--window", type=int, default=1,
                        help="moving average over this many logged points of the batch statistics (1: none)")
    parser.add_argument("--title", default="", help="title above the panels (default: none)")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    return parser


def run(args, parser) -> int:
    if args.window < 1:
        parser.error(f"--window: must be at least 1, got {args.window}")
    check_png_output(parser, args.output, args.dpi, args.overwrite, args.names, args.runs, "runs")
    from ..tools.plots import curves_figure, load_runs, save_png  # matplotlib: only after the arguments

    runs = load_runs(args.runs, args.names)
    save_png(curves_figure(runs, args.window, args.title or None), args.output, args.dpi)
    for curves in runs:
        logged = sorted(curves.metrics.training)
        span = f"iterations {logged[0]}..{logged[-1]}" if logged else "no training records"
        print(f"{curves.label}: {span} ({curves.metrics.path})")
    print(f"wrote {args.output}")
    return 0


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv)
