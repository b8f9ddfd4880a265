"""Does the uniform loss do what the paper claims? Trains the toy config (`code/configs/toy.yaml`: 100
classes, 200 iterations) for each setting and seed, and prints per setting: toy LFW accuracy (mean and
spread), the mean angle from each unit-normalised class center to its nearest other center, the same for
the head's class weights, the same for the classes' mean unit features over one pass of the training set
(the centers as the features place them, whichever centers the run moved), Eq. 6 as printed on the
unit-normalised centers (the energy the loss lowers: how evenly the centers cover the sphere as a whole),
the squared norm of their mean (what Eq. 6 asks to vanish, to first order),
and the median ratio |alpha dL_u/dx| / |dCE/dx| over the features of one batch half-way through training.

    PYTHONPATH=code python bench/bench_uniform_effect.py [--seeds 0 1 2] [--variants]
    PYTHONPATH=code python bench/bench_uniform_effect.py --free_centers   # Eq. 6 on free unit centers
    PYTHONPATH=code python bench/bench_uniform_effect.py --uniform_only   # L_u alone through the network

The baseline (alpha = 0) runs in the same command, so the differences are what to read, not the absolute
figures. `--variants` adds the readings the default was chosen against (raw feature-space centers, and
Eq. 6's printed reduction on the sphere at alpha 1 and 10). Needs the toy set: it is generated and aligned
first (as `make demo` does) when `--data` does not hold it yet.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from uniformface.nn.centers import ClassCenters, mean_min_angle
from uniformface.base.config import load_config
from uniformface.eval.evaluate import evaluate_pairs
from uniformface.nn.losses import uniform_loss
from uniformface.nn.models import normalize_pixels
from uniformface.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]

DEFAULT = ("default", [])
BASELINE = ("alpha=0", ["alpha=0"])
VARIANTS = [
    ("raw centers, Eq. 6 printed (before)", ["normalize_centers=false", "uniform_reduction=pairs"]),
    ("sphere, Eq. 6 printed", ["uniform_reduction=pairs"]),
    ("sphere, Eq. 6 printed, alpha=10", ["uniform_reduction=pairs", "alpha=10"]),
]


def ensure_toy_set(data: Path) -> None:
    if (data / "processed/train").is_dir() and (data / "processed/lfw").is_dir():
        return
    code = ROOT / "code"
    for args in ([code / "make_toy_data.py", "--output", data],
                 [code / "preprocess.py", "--dataset", data / "train", "--output_dir", data / "processed/train"],
                 [code / "preprocess.py", "--dataset", data / "lfw", "--output_dir", data / "processed/lfw"]):
        subprocess.run([sys.executable, *map(str, args)], check=True)


def gradient_ratio(trainer: Trainer) -> float:
    """Median over one batch's features of |alpha dL_u/dx_i| / |dCE/dx_i| at the current weights."""
    cfg, model = trainer.cfg, trainer.model
    images, labels, _ = next(iter(trainer._loader()))
    model.eval()  # the head then neither advances lambda nor renormalises; the backbone has no batch norm
    try:
        return _median_ratio(cfg, model, trainer.centers, images, labels)
    finally:
        model.train()


def _median_ratio(cfg, model, centers, images, labels) -> float:
    features = model.backbone(normalize_pixels(images)).detach().requires_grad_()
    ce = F.cross_entropy(model.head(features, labels), labels)
    uniform = cfg.alpha * uniform_loss(centers.loss_centers(features, labels), reduction=cfg.uniform_reduction,
                                       batch_size=cfg.batch_size)
    (ce_grad,) = torch.autograd.grad(ce, features)
    (uniform_grad,) = torch.autograd.grad(uniform, features, allow_unused=True)
    if uniform_grad is None:  # center_mode=weight: L_u acts on the head's weights, not on the features
        return 0.0
    return float((uniform_grad.norm(dim=1) / ce_grad.norm(dim=1).clamp_min(1e-30)).median())


def run(cfg_path: Path, data: Path, overrides: list[str], seed: int, run_dir: Path) -> dict:
    cfg = load_config(cfg_path, [f"seed={seed}", f"dataset.train={data / 'processed/train'}",
                                 f"dataset.test={data / 'processed/lfw'}", f"dataset.pairs={data / 'pairs.txt'}",
                                 *overrides])
    trainer = Trainer(cfg, run_dir, progress=False)
    # The ratio is read half-way: at the end most training faces are classified with p ~ 1 and the
    # cross-entropy's gradient on them has all but vanished.
    full = cfg.max_iters
    trainer.cfg.max_iters = full // 2
    trainer.fit()
    ratio = gradient_ratio(trainer) if cfg.alpha > 0 else 0.0
    trainer.cfg.max_iters = full
    trainer.fit()
    backbone = trainer.model.backbone.eval()
    result = evaluate_pairs(backbone, cfg.dataset.test, cfg.dataset.pairs, num_workers=0, progress=False)
    centers = trainer.centers
    center_rows = centers.centers[centers.initialized] if isinstance(centers, ClassCenters) else centers.weight
    unit_centers = F.normalize(center_rows.detach().double(), dim=1)
    return {"accuracy": 100 * result["accuracy_mean"], "center_angle": mean_min_angle(center_rows.detach()),
            "class_mean_angle": mean_min_angle(class_means(trainer)),
            "energy": float(uniform_loss(unit_centers, reduction="pairs")),
            "mean_sq": float(unit_centers.mean(0).square().sum()),
            "weight_angle": mean_min_angle(trainer.model.head.weight.detach()),
            "ratio": ratio}


@torch.no_grad()
def class_means(trainer: Trainer) -> torch.Tensor:
    """The mean unit feature of each class over one pass of the training set (no flip, eval mode): the
    class centers as the features place them, whatever `center_mode` the run moved."""
    model = trainer.model.eval()
    sums = torch.zeros(len(trainer.model.head.weight), trainer.cfg.emb_dim, dtype=torch.float64)
    loader = torch.utils.data.DataLoader(trainer.dataset, batch_size=128, num_workers=0)
    for images, labels, *_ in loader:
        features = F.normalize(model.backbone(normalize_pixels(images)).double(), dim=1)
        sums.index_add_(0, labels, features)
    model.train()
    return sums[sums.norm(dim=1) > 0]


def free_centers(seed: int = 0, m: int = 100, dim: int = 512, rank: int = 40, steps: int = 400, step: float = 0.5) -> None:
    """Eq. 6 on free unit centers (no network): M centers clustered in a rank-`rank` subspace around a common
    direction, as trained centers are, descend L_u (`center` reduction) by projected gradient steps; prints
    the energy, the squared norm of the centers' mean (what Eq. 6 asks to vanish to first order) and the
    mean nearest-center angle along the way."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, dim, generator=generator, dtype=torch.float64)
    common = torch.randn(dim, generator=generator, dtype=torch.float64) * 1.5
    centers = F.normalize(torch.randn(m, rank, generator=generator, dtype=torch.float64) @ basis + common, dim=1)
    print("step | Eq. 6 energy | squared norm of the mean | mean nearest-center angle °")
    for index in range(steps + 1):
        if index in (0, 10, 50, 100, 200, 400) or index == steps:
            energy = float(uniform_loss(centers, reduction="pairs"))
            print(f"{index} | {energy:.5f} | {float(centers.mean(0).square().sum()):.4f} | {mean_min_angle(centers):.2f}")
        x = centers.clone().requires_grad_()
        (grad,) = torch.autograd.grad(uniform_loss(x, reduction="center", batch_size=1), x)
        grad -= (grad * centers).sum(1, keepdim=True) * centers  # along the sphere
        centers = F.normalize(centers - step * grad, dim=1)


def spread(values: list[float], digits: int = 2) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {deviation:.{digits}f}"


def uniform_only(cfg_path: Path, data: Path, run_dir: Path, steps: int = 150, lr: float = 0.1) -> None:
    """L_u alone through the network: train the toy at alpha = 0, then descend the default L_u (no
    cross-entropy) with SGD on the backbone, moving the centers by Eq. 7 after each step; prints the
    nearest-center angle, Eq. 6's energy and the squared norm of the unit centers' mean along the way."""
    cfg = load_config(cfg_path, ["alpha=0", f"dataset.train={data / 'processed/train'}",
                                 f"dataset.test={data / 'processed/lfw'}", f"dataset.pairs={data / 'pairs.txt'}"])
    trainer = Trainer(cfg, run_dir, progress=False)
    trainer.fit()
    model, centers = trainer.model, trainer.centers
    optimizer = torch.optim.SGD(model.backbone.parameters(), lr=lr, momentum=0.9)
    print("step | nearest-center angle ° | Eq. 6 energy | squared norm of the unit centers' mean")
    for step, (images, labels, _) in enumerate(trainer._loader()):  # the training sampler is endless
        if step % 25 == 0:
            unit = F.normalize(centers.centers[centers.initialized].detach().double(), dim=1)
            print(f"{step} | {mean_min_angle(unit):.2f} | {float(uniform_loss(unit, reduction='pairs')):.5f} "
                  f"| {float(unit.mean(0).square().sum()):.4f}", flush=True)
        if step == steps:
            return
        features = model.backbone(normalize_pixels(images))
        loss = uniform_loss(centers.loss_centers(features, labels), reduction=cfg.uniform_reduction,
                            batch_size=cfg.batch_size)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        centers.update(features.detach(), labels, cfg.beta)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "code/configs/toy.yaml"))
    parser.add_argument("--data", default=str(ROOT / "data/toy"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", action="store_true", help="also the readings the default was chosen against")
    parser.add_argument("--setting", nargs="+", action="append", default=[], metavar="NAME_OR_KEY=VALUE",
                        help="a further setting: its name, then its overrides (e.g. --setting a10 alpha=10)")
    parser.add_argument("--no_baseline", action="store_true", help="leave alpha=0 out (run it elsewhere)")
    parser.add_argument("--no_default", action="store_true", help="only alpha=0 and the --setting/--variants ones")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every setting (e.g. max_iters=400)")
    parser.add_argument("--free_centers", action="store_true",
                        help="only Eq. 6 on free unit centers (no network, seconds), then exit")
    parser.add_argument("--uniform_only", action="store_true",
                        help="only: train alpha=0, then descend L_u alone through the network (minutes), then exit")
    args = parser.parse_args()
    if args.free_centers:
        free_centers()
        return 0
    data = Path(args.data)
    ensure_toy_set(data)
    if args.uniform_only:
        with tempfile.TemporaryDirectory() as tmp:
            uniform_only(Path(args.config), data, Path(tmp) / "run")
        return 0
    settings = ([] if args.no_baseline else [BASELINE]) + ([] if args.no_default else [DEFAULT]) + (VARIANTS if args.variants else []) \
        + [(extra[0], extra[1:]) for extra in args.setting]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in settings:
            rows[name] = [run(Path(args.config), data, [*overrides, *args.overrides], seed,
                              Path(tmp) / f"{len(rows)}_{seed}") for seed in args.seeds]
            per_seed = ", ".join(f"{r['center_angle']:.2f}° / {r['class_mean_angle']:.2f}° / {r['energy']:.4f} "
                                 f"/ {r['mean_sq']:.4f} / {r['accuracy']:.2f}%" for r in rows[name])
            print(f"{name}: nearest-center angle / class-mean angle / energy / squared norm of the unit centers' mean / accuracy per seed {per_seed}", file=sys.stderr, flush=True)
    print(f"seeds {args.seeds}; mean ± standard deviation over seeds")
    print("| setting | toy LFW accuracy % | nearest-center angle ° | nearest-weight angle ° "
          "| class-mean angle ° | Eq. 6 energy of the unit centers | squared norm of their mean | median alpha·dL_u/dx : dCE/dx "
          "| center angle gain over alpha=0, per seed | class-mean angle gain, per seed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    base = rows.get(BASELINE[0], next(iter(rows.values())))
    for name, results in rows.items():
        gains = ", ".join(f"{r['center_angle'] - b['center_angle']:+.2f}" for r, b in zip(results, base))
        mean_gains = ", ".join(f"{r['class_mean_angle'] - b['class_mean_angle']:+.2f}" for r, b in zip(results, base))
        print(f"| {name} | {spread([r['accuracy'] for r in results])} | {spread([r['center_angle'] for r in results])} "
              f"| {spread([r['weight_angle'] for r in results])} | {spread([r['class_mean_angle'] for r in results])} "
              f"| {spread([r['energy'] for r in results], 4)} | {spread([r['mean_sq'] for r in results], 4)} "
              f"| {statistics.median(r['ratio'] for r in results):.3g} "
              f"| {gains} | {mean_gains} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
