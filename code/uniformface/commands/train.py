"""Train SphereFace + A-Softmax + UniformFace's uniform loss from a YAML config.

    python code/train.py --config code/config.yaml --logdir log [--run_name NAME] [--resume] [--set key=value ...]
    torchrun --nproc_per_node 4 code/train.py --config code/config.yaml --logdir log

The run folder (`--logdir/<run_name>`) keeps the resolved config.yaml, checkpoint.pt, metrics.jsonl,
TensorBoard events and the final `{model_name}_{emb_dim}.pt`. It is locked while the run writes to it:
a second train.py (or ablate.py) into it is refused at once, naming the process that holds it.

Exit status: 0 done; 2 a usage or config error (nothing was touched); 1 any other expected failure (a
diverged run, unreadable data, a busy or read-only folder, a full disk, a missing GPU, a refused
checkpoint), each as one line `train.py: error: ...` naming the file, key or device and the fix
(`--debug` adds the traceback).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..base.cli import EXPECTED, UsageError, new_parser, run_command
from ..base.config import ConfigError, check_evaluation_files, load_config, run_name

NAME = "train"
# code/config.yaml of the source tree this package sits in (a copy installed by `pip install .` has none)
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"


def check_config_given(config: str) -> None:
    """A UsageError when --config was left at its default and this installation has no such file."""
    if config == str(DEFAULT_CONFIG) and not DEFAULT_CONFIG.is_file():
        raise UsageError(f"--config: this installation has no {DEFAULT_CONFIG} (the package was installed "
                         "without its source tree): pass --config FILE, e.g. the source tree's code/config.yaml")


def build_parser():
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config")
    parser.add_argument("--logdir", default="log", help="folder that receives the run folder")
    parser.add_argument("--run_name", default=None, help="run folder name (default: derived from the config)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run folder's checkpoint, with its saved config (--set changes it "
                             "from there on, recorded in config_history.yaml); a folder without a checkpoint "
                             "starts the run from iteration 0")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted for nested, value parsed as YAML); repeatable "
                             "(default: none)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def run(args, parser) -> int:
    rank0 = int(os.environ.get("RANK", "0")) == 0
    check_config_given(args.config)
    try:
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(args.logdir) / (args.run_name or run_name(cfg))
        saved = run_dir / "config.yaml"
        if args.resume and saved.is_file():
            # resume reads the run's own config back; --set values change it from here on (the trainer
            # rewrites config.yaml with them and records the change in config_history.yaml)
            cfg = load_config(saved, args.overrides)
        # --resume on a folder without a run (killed before it wrote anything): --config's settings, and
        # the trainer starts from iteration 0
        check_evaluation_files(cfg)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    from ..eval.during_training import training_evaluators  # torch: only after the arguments
    from ..train.build import flush_denormals_on_cpu
    from ..train.trainer import STATE_FILE, check_device, lock_folder, train

    # before the run folder is made; and the denormal setting before the val_targets sets are decoded, the
    # first parallel work, whose threads take the setting then (docs/DESIGN.md §5.1)
    flush_denormals_on_cpu(check_device(cfg.resolved_device()))
    # Rank 0 locks the folder first, so that a run already in it is named before anything else is said.
    lock = lock_folder(run_dir) if rank0 else None
    try:
        if not args.resume and (run_dir / STATE_FILE).exists():
            raise UsageError(f"{run_dir} already holds a run; pass --resume to continue it or --run_name for a new one")
        if rank0:
            print(f"run folder: {run_dir}")
        # evaluated on rank 0 only: the other ranks keep the same list (they must meet the same evaluation
        # points) without reading its sets
        evaluators = training_evaluators(cfg, load=rank0)
        weights = train(cfg, run_dir, resume=args.resume, progress=not args.no_progress, lock=lock,
                        evaluators=evaluators)
    finally:
        if lock is not None:
            lock.release()
    if rank0:
        print(f"final weights: {weights}")
    return 0


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv, EXPECTED + ("uniformface.train.divergence.TrainingError",))
