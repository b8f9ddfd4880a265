"""A short training run that logs every 10 iterations: shared by the stability test and its benchmark."""
import json
from pathlib import Path

from uniformface.config import load_config
from uniformface.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def stability_run(tree, run_dir, center_mode: str, beta: float, iterations: int = 200) -> list[dict]:
    """lr 0.1 (the paper's), short warm-up; returns the metrics.jsonl records."""
    cfg = load_config(ROOT / "code" / "configs" / "toy.yaml", [
        f"dataset.train={tree}", "dataset.exclude_identities=[]", "model_name=sphereface4", "emb_dim=32",
        "batch_size=4", "num_workers=0", f"max_iters={iterations}", f"checkpoint_every={iterations}",
        "log_every=10", f"milestones=[{int(iterations * 0.75)}]", "warmup_iters=20", "lr=0.1", "device=cpu",
        f"center_mode={center_mode}", f"beta={beta}"])
    train(cfg, run_dir, progress=False)
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
