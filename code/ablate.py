"""Train and test every setting of a grid, then print the earlier port's result tables.

    python code/ablate.py --config code/config.yaml --logdir log/ablation --grid alpha=0,1 beta=0,0.001
                          [--set key=value ...] [--protocol sphereface|insightface] [--list]

Each setting trains in LOGDIR/<key=value_...> (as train.py would, with the grid's values as `--set`
overrides) and is tested on dataset.test / dataset.pairs as test.py does (lfw_results.json beside the
weights). LOGDIR/results.md then holds the per-fold LFW accuracy table (rows `alpha=1.0/beta=0.001`) and
the mean minimum class-center distance table, and is printed.

Run it again to continue: finished settings are not rerun, an interrupted one resumes from its
checkpoint. Values are read as YAML (`beta=0,1e-3`, `milestones=[10,20],[30,40]`); every setting is
validated before any training. One process (one GPU); for several GPUs run train.py under torchrun
per setting and gather_results.py over the folders.

LOGDIR and the folders of the settings still to run are locked for the whole grid: a second ablate.py
on LOGDIR, or a train.py into one of those folders, is refused at once, naming the process that holds
it. An error ends in one line (`--debug` adds the traceback); Ctrl-C ends with status 130.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from uniformface.ablation import RESULTS_MD, missing_inputs, plan, results_markdown, run_grid  # noqa: E402
from uniformface.checkpoint import remove_stale_partials  # noqa: E402
from uniformface.cli import EXPECTED, add_debug_flag, describe, run_script  # noqa: E402
from uniformface.config import ConfigError  # noqa: E402
from uniformface.trainer import TrainingError, check_device, lock_folder  # noqa: E402


def main(argv=None) -> int:
    return run_script(_main, argv, EXPECTED + (TrainingError,))


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).with_name("config.yaml")), help="YAML config")
    parser.add_argument("--logdir", default="log/ablation", help="folder of the settings' run folders")
    parser.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                        help="one axis per argument; values parsed as YAML")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a config key for every setting (as train.py --set)")
    parser.add_argument("--protocol", choices=("sphereface", "insightface"), default="sphereface")
    parser.add_argument("--list", action="store_true", help="print the settings and their state; do nothing")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("error: run ablate.py as one process; for several GPUs run train.py under torchrun per setting",
              file=sys.stderr)
        return 2
    try:
        settings = plan(args.config, args.logdir, args.grid, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for s in settings:
        print(f"{s.label:<40} {s.state:<9} {s.note}")
    if args.list:
        return 0
    missing = missing_inputs(settings)
    if missing:
        print("error: missing input(s), nothing was run:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    to_run = [s for s in settings if s.state in ("train", "resume", "evaluate")]
    for device in sorted({s.cfg.resolved_device() for s in to_run}):
        check_device(device)
    logdir = Path(args.logdir)
    locks = {}
    try:
        locks[logdir] = lock_folder(logdir)
        remove_stale_partials(logdir, [RESULTS_MD])
        for s in to_run:
            locks[s.folder] = lock_folder(s.folder)
        return _run(args, settings, locks)
    finally:
        for lock in locks.values():
            lock.release()


def _run(args, settings, locks) -> int:
    def train_fn(cfg, run_dir, resume):
        from uniformface.trainer import train

        return train(cfg, run_dir, resume=resume, progress=not args.no_progress, lock=locks[Path(run_dir)])

    def evaluate_fn(weights, cfg):  # as test.py --model_path weights: the same results file and summary
        from uniformface.evaluate import evaluate_model_on_pairs
        from uniformface.report import RESULTS_FILE, lfw_summary

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
        if args.debug:
            raise
        print(f"error: {describe(exc)} (run the same command again to continue)", file=sys.stderr)
        return 1
    title = (f"# Ablation over {' '.join(args.grid)}\n\nconfig `{args.config}`"
             + (f", `--set {' '.join(args.overrides)}`" if args.overrides else "") + f", {len(settings)} settings")
    markdown = results_markdown(settings, title)
    from uniformface.checkpoint import atomic_write_text

    atomic_write_text(Path(args.logdir) / RESULTS_MD, markdown)
    print(markdown, end="")
    print(f"wrote {Path(args.logdir) / RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
