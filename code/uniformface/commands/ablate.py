"""Train and test every setting of a grid, then print the earlier port's result tables.

    python code/ablate.py --config code/config.yaml --logdir log/ablation --grid alpha=0,1 beta=0,0.001
                          [--set key=value ...] [--protocol sphereface|insightface] [--list]

Each setting trains in LOGDIR/<key=value_...> (as train.py would, with the grid's values as `--set`
overrides) and is tested on dataset.test / dataset.pairs as test.py does (lfw_results.json beside the
weights). LOGDIR/results.md then holds the per-fold LFW accuracy table (rows `alpha=1.0/beta=0.001`) and
the mean minimum class-center distance table, and is printed; LOGDIR/curves.png, linked from it, draws
the settings' training curves side by side (as plot_runs.py).

Run it again to continue: finished settings are not rerun, an interrupted one resumes from its
checkpoint. Values are read as YAML (`beta=0,1e-3`, `milestones=[10,20],[30,40]`); every setting is
validated before any training. One process (one GPU); for several GPUs run train.py under torchrun
per setting and gather_results.py over the folders.

LOGDIR and the folders of the settings still to run are locked for the whole grid: a second ablate.py
on LOGDIR, or a train.py into one of those folders, is refused at once, naming the process that holds
it. Exit status: 0 done; 2 a usage or config error (nothing was run); 1 any other failure, as one line
`ablate.py: error: ...` (`--debug` adds the traceback); 130 Ctrl-C.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..base.cli import EXPECTED, ScriptError, UsageError, describe, new_parser, run_command
from ..base.config import ConfigError
from ..base.registry import PROTOCOLS
from .train import DEFAULT_CONFIG, check_config_given

NAME = "ablate"


def build_parser():
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config")
    parser.add_argument("--logdir", default="log/ablation", help="folder of the settings' run folders")
    parser.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                        help="one axis per argument; values parsed as YAML")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a config key for every setting (as train.py --set) (default: none)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOLS[0], help="LFW verification protocol")
    parser.add_argument("--list", action="store_true", help="print the settings and their state; do nothing")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def run(args, parser) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("run ablate.py as one process; for several GPUs run train.py under torchrun per setting")
    check_config_given(args.config)
    from ..tools.ablation import CURVES_PNG, RESULTS_MD, missing_inputs, plan  # torch: only after the arguments
    from ..base.atomic import remove_stale_partials
    from ..train.trainer import check_device, lock_folder

    try:
        settings = plan(args.config, args.logdir, args.grid, args.overrides)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    for s in settings:
        print(f"{s.label:<40} {s.state:<9} {s.note}")
    if args.list:
        return 0
    missing = missing_inputs(settings)
    if missing:
        raise ScriptError("missing input(s), nothing was run: " + "; ".join(missing))
    to_run = [s for s in settings if s.state in ("train", "resume", "evaluate")]
    for device in sorted({s.cfg.resolved_device() for s in to_run}):
        check_device(device)
    logdir = Path(args.logdir)
    locks = {}
    try:
        locks[logdir] = lock_folder(logdir)
        remove_stale_partials(logdir, [RESULTS_MD, CURVES_PNG])
        for s in to_run:
            locks[s.folder] = lock_folder(s.folder)
        return _run(args, settings, locks)
    finally:
        for lock in locks.values():
            lock.release()


def _run(args, settings, locks) -> int:
    from ..tools.ablation import CURVES_PNG, RESULTS_MD, draw_curves, results_markdown, run_grid
    from ..base.atomic import atomic_write_text
    from ..eval.during_training import training_evaluators
    from ..eval.evaluate import evaluate_model_on_pairs
    from ..tools.report import RESULTS_FILE, lfw_summary
    from ..train.trainer import train

    def train_fn(cfg, run_dir, resume):
        return train(cfg, run_dir, resume=resume, progress=not args.no_progress, lock=locks[Path(run_dir)],
                     evaluators=training_evaluators(cfg))

    def evaluate_fn(weights, cfg):  # as test.py --model_path weights: the same results file and summary
        # overwrite: the setting's folder is this grid's own run folder (plan() checked that its config is
        # the setting's, and it is locked); a results file or ROC figure there is this grid's, left by a
        # test that was interrupted
        label, lfw = evaluate_model_on_pairs(weights, cfg.dataset.test, cfg.dataset.pairs,
                                             weights.parent / RESULTS_FILE, protocol=args.protocol,
                                             device=cfg.resolved_device(), num_workers=cfg.num_workers,
                                             progress=not args.no_progress, overwrite=True)
        print(lfw_summary(label, lfw, args.protocol))

    try:
        run_grid(settings, train_fn, evaluate_fn)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ScriptError(f"{describe(exc)} (run the same command again to continue)") from exc
    title = (f"# Ablation over {' '.join(args.grid)}\n\nconfig `{args.config}`"
             + (f", `--set {' '.join(args.overrides)}`" if args.overrides else "") + f", {len(settings)} settings")
    curves = Path(args.logdir) / CURVES_PNG
    try:  # the tables are the grid's result: a figure that cannot be drawn is reported, not fatal
        drawn = draw_curves(settings, curves)
    except (ValueError, OSError) as exc:
        print(f"warning: {curves} not drawn: {describe(exc)}", file=sys.stderr)
        drawn = False
    markdown = results_markdown(settings, title, CURVES_PNG if drawn else None)
    atomic_write_text(Path(args.logdir) / RESULTS_MD, markdown)
    print(markdown, end="")
    print(f"wrote {Path(args.logdir) / RESULTS_MD}" + (f" and {curves}" if drawn else ""))
    return 0


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv, EXPECTED + ("uniformface.train.divergence.TrainingError",))
