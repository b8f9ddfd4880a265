"""`make demo`: the whole pipeline on the project's generated toy face set, in minutes on a CPU.

Runs the same commands a user runs on CASIA-WebFace and LFW (printed before each step):
make_toy_data.py -> preprocess.py (MTCNN) x2 -> train.py (configs/toy.yaml) -> test.py,
then scores two floors on the same pairs (raw pixels, the same network untrained) and prints all three.
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

from ..cli import ScriptError, new_parser, run_command
from ..report import fold_table

NAME = "demo"
CODE = Path(__file__).resolve().parents[2]  # the source tree's code/: the scripts and configs/toy.yaml


def build_parser():
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--data", default="data/toy", help="folder of the toy set and its aligned copies")
    parser.add_argument("--logdir", default="log/toy", help="the run goes to LOGDIR/demo (replaced on each call)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the toy set and of the training run")
    return parser


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
    return 0


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv)
