"""`make demo`: the whole pipeline on the project's generated toy face set, in minutes on a CPU.

Runs the same commands a user runs on CASIA-WebFace and LFW (printed before each step):
make_toy_data.py -> preprocess.py (MTCNN) x2 -> train.py (configs/toy.yaml) -> test.py,
then scores two floors on the same pairs (raw pixels, the same network untrained) and prints all three.
The toy set is a smoke test of every stage, not a benchmark.
"""
import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from uniformface.report import fold_table  # noqa: E402

CODE = Path(__file__).resolve().parent


def run(*args: str) -> None:
    command = [sys.executable, *args]
    print("\n$ python " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(command, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/toy")
    parser.add_argument("--logdir", default="log/toy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data, run_dir = Path(args.data), Path(args.logdir) / "demo"
    start = time.perf_counter()
    try:
        run(str(CODE / "make_toy_data.py"), "--output", str(data), "--seed", str(args.seed))
        run(str(CODE / "preprocess.py"), "--dataset", str(data / "train"), "--output_dir", str(data / "processed/train"))
        run(str(CODE / "preprocess.py"), "--dataset", str(data / "lfw"), "--output_dir", str(data / "processed/lfw"))
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time the demo is called
        run(str(CODE / "train.py"), "--config", str(CODE / "configs/toy.yaml"), "--logdir", args.logdir,
            "--run_name", "demo", "--set", f"seed={args.seed}", "--set", f"dataset.train={data / 'processed/train'}",
            "--set", f"dataset.test={data / 'processed/lfw'}", "--set", f"dataset.pairs={data / 'pairs.txt'}")
        model = run_dir / "sphereface4_512.pt"
        run(str(CODE / "test.py"), "--model_path", str(model))
        common = ["--dataset", str(data / "processed/lfw"), "--pairs_path", str(data / "pairs.txt"), "--no_progress"]
        run(str(CODE / "test.py"), "--baseline", "raw", *common, "--json", str(run_dir / "baseline_raw.json"))
        run(str(CODE / "test.py"), "--baseline", "untrained", "--model_path", str(model), "--seed", str(args.seed),
            *common, "--json", str(run_dir / "baseline_untrained.json"))
    except subprocess.CalledProcessError as exc:
        print(f"\ndemo failed at: {' '.join(exc.cmd[1:])}", file=sys.stderr)
        return 1
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


if __name__ == "__main__":
    sys.exit(main())
