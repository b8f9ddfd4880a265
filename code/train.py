"""Train SphereFace + A-Softmax + UniformFace's uniform loss from a YAML config.

    python code/train.py --config code/config.yaml --logdir log [--run_name NAME] [--resume] [--set key=value ...]
    torchrun --nproc_per_node 4 code/train.py --config code/config.yaml --logdir log

The run folder (`--logdir/<run_name>`) keeps the resolved config.yaml, checkpoint.pt, metrics.jsonl,
TensorBoard events and the final `{model_name}_{emb_dim}.pt`. It is locked while the run writes to it:
a second train.py (or ablate.py) into it is refused at once, naming the process that holds it.

Exit status: 0 done; 2 a config error (nothing was touched); 1 any other expected failure (a diverged
run, unreadable data, a busy or read-only folder, a full disk, a missing GPU, a refused checkpoint), each
as one line `error: ...` naming the file, key or device and the fix (`--debug` adds the traceback).
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from uniformface.cli import EXPECTED, add_debug_flag, run_script  # noqa: E402
from uniformface.config import ConfigError, load_config, run_name  # noqa: E402
from uniformface.trainer import STATE_FILE, TrainingError, check_device, lock_folder, train  # noqa: E402


def main(argv=None) -> int:
    return run_script(_main, argv, EXPECTED + (TrainingError,))


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).with_name("config.yaml")), help="YAML config")
    parser.add_argument("--logdir", default="log", help="folder that receives the run folder")
    parser.add_argument("--run_name", default=None, help="run folder name (default: derived from the config)")
    parser.add_argument("--resume", action="store_true", help="continue the run folder's checkpoint, with its saved config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted for nested, value parsed as YAML); repeatable")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(args.logdir) / (args.run_name or run_name(cfg))
        if args.resume:
            saved = run_dir / "config.yaml"
            if not saved.is_file():
                raise ConfigError(f"--resume: {saved} not found (is --logdir/--run_name the run's folder?)")
            cfg = load_config(saved, args.overrides)  # resume reads the run's own config back
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    check_device(cfg.resolved_device())  # before the run folder is made
    # Rank 0 locks the folder first, so that a run already in it is named before anything else is said.
    lock = lock_folder(run_dir) if rank0 else None
    try:
        if not args.resume and (run_dir / STATE_FILE).exists():
            print(f"error: {run_dir} already holds a run; pass --resume to continue it or --run_name for a new one",
                  file=sys.stderr)
            return 2
        if rank0:
            print(f"run folder: {run_dir}")
        weights = train(cfg, run_dir, resume=args.resume, progress=not args.no_progress, lock=lock)
    finally:
        if lock is not None:
            lock.release()
    if rank0:
        print(f"final weights: {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
