"""`make demo`: the whole pipeline on the project's generated toy face set, in minutes on a CPU.

Runs the same commands a user runs on CASIA-WebFace and LFW (printed before each step):
make_toy_data.py -> preprocess.py (MTCNN) x2 -> train.py (configs/toy.yaml) -> test.py -> plot_runs.py,
then scores two floors on the same pairs (raw pixels, the same network untrained) and prints all three,
and last the paths of the run's ROC curve and training curves.
The toy set is a smoke test of every stage, not a benchmark. It runs the scripts and the toy config of the
source tree it sits in (code/), so it is not installed as a command.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..base.cli import ScriptError, new_parser, run_command
from ..tools.report import fold_table

NAME = "demo"
CODE = Path(__file__).resolve().parents[2]  # the source tree's code/: the scripts and configs/toy.yaml


def toy_parser(name: str, description: str, data: str, logdir: str, logdir_help: str, runs: str = "the training run"):
    """The parser of a script that makes a toy set, aligns it and trains on it (the demo, the figure)."""
    parser = new_parser(name, description)
    parser.add_argument("--data", default=data, help="folder of the toy set and its aligned copies")
    parser.add_argument("--logdir", default=logdir, help=logdir_help)
    parser.add_argument("--seed", type=int, default=0, help=f"seed of the toy set and of {runs}")
    return parser


def build_parser():
    return toy_parser(NAME, __doc__, "data/toy", "log/toy", "the run goes to LOGDIR/demo (replaced on each call)")


def step(*args: str) -> None:
    command = [sys.executable, *args]
    print("\n$ python " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(command, check=True)


def run(args, parser) -> int:
    data, run_dir = Path(args.data), Path(args.logdir) / "demo"
    start = time.perf_counter()
    try:
        step(str(CODE / "make_toy_data.py"), "--output", str(data), "--seed", str(args.seed))
        for part in ("train", "lfw"):
            step(str(CODE / "preprocess.py"), "--dataset", str(data / part),
                 "--output_dir", str(data / "processed" / part))
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time the demo is called
        step(str(CODE / "train.py"), "--config", str(CODE / "configs/toy.yaml"), "--logdir", args.logdir,
             "--run_name", "demo", "--set", f"seed={args.seed}", "--set", f"dataset.train={data / 'processed/train'}",
             "--set", f"dataset.test={data / 'processed/lfw'}", "--set", f"dataset.pairs={data / 'pairs.txt'}")
        model = run_dir / "sphereface4_512.pt"
        step(str(CODE / "test.py"), "--model_path", str(model))
        step(str(CODE / "plot_runs.py"), str(run_dir), "--output", str(run_dir / "curves.png"))
        common = ["--dataset", str(data / "processed/lfw"), "--pairs_path", str(data / "pairs.txt"), "--no_progress"]
        step(str(CODE / "test.py"), "--baseline", "raw", *common, "--json", str(run_dir / "baseline_raw.json"))
        step(str(CODE / "test.py"), "--baseline", "untrained", "--model_path", str(model), "--seed", str(args.seed),
             *common, "--json", str(run_dir / "baseline_untrained.json"))
    except subprocess.CalledProcessError as exc:
        raise ScriptError(f"failed at: {' '.join(exc.cmd[1:])}") from exc
    rows = [(name, json.loads((run_dir / file).read_text())) for name, file in
            (("raw pixels", "baseline_raw.json"), ("sphereface4 untrained", "baseline_untrained.json"),
             ("sphereface4 trained", "lfw_results.json"))]
    print("\nToy LFW-protocol verification (10 folds, sphereface protocol), accuracy in %:")
    print(fold_table(rows))
    trained = rows[2][1]["accuracy_mean"]
    margin = trained - max(rows[0][1]["accuracy_mean"], rows[1][1]["accuracy_mean"])
    print(f"\ntrained model: {100 * trained:.2f} %, {100 * margin:+.2f} points over the better baseline; "
          f"results in {run_dir / 'lfw_results.json'}; demo took {time.perf_counter() - start:.0f} s")
    print(f"ROC curve: {rows[2][1].get('roc_png') or run_dir / 'lfw_roc.png'}\ntraining curves: {run_dir / 'curves.png'}")
    return 0


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv)
