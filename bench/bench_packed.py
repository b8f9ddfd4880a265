"""Loader throughput of the three training-set formats in one run: the aligned JPEG folder (baseline),
the same images as an insightface `.rec`, and the packed uint8 memory map. Each goes through the loader
Trainer builds (`datasets.training_loader` over a GlobalBatchSampler, random flip on), so the figures are
images/s the training loop can be fed. The files are freshly written, hence in the page cache: this measures
decoding and copying, not the disk.

    PYTHONPATH=code python bench/bench_packed.py [--workers 0 2] [--batch 64] [--batches 30]
"""
import argparse
import tempfile
import time
from pathlib import Path

from common import write_aligned_tree
from uniformface.data import (GlobalBatchSampler, ImageFolderTrainSet, open_train_set, pack,
                              training_loader, write_record_file)


def images_per_second(dataset, batch: int, batches: int, workers: int) -> float:
    loader = training_loader(dataset, GlobalBatchSampler(len(dataset), batch, seed=0), workers)
    stream = iter(loader)
    next(stream)  # worker start-up is not throughput
    start = time.perf_counter()
    count = sum(next(stream)[0].shape[0] for _ in range(batches))
    return count / (time.perf_counter() - start)


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--classes", type=int, default=40)
    parser.add_argument("--per_class", type=int, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tree = write_aligned_tree(tmp / "train", n_classes=args.classes, per_class=args.per_class)
        folder = ImageFolderTrainSet(tree, flip=True)
        rec = tmp / "train.rec"
        write_record_file(rec, rec.with_suffix(".idx"), [(s.path, s.label) for s in folder.samples])
        t = time.perf_counter()
        packed_dir = pack(tree, tmp / "train", workers=0, progress=False).output
        pack_rate = len(folder) / (time.perf_counter() - t)
        sets = {"JPEG folder": folder, ".rec": open_train_set(rec, flip=True),
                "packed": open_train_set(packed_dir, flip=True)}
        sizes = {"JPEG folder": folder_bytes(tree), ".rec": rec.stat().st_size, "packed": folder_bytes(packed_dir)}
        print(f"{len(folder)} images of 112x96, {args.classes} classes; batch {args.batch}, "
              f"{args.batches} timed batches; packing ran at {pack_rate:.0f} images/s (1 process)")
        print(f"{'set':<12} {'MB':>7} " + " ".join(f"{f'{w} workers img/s':>18}" for w in args.workers))
        rates = {name: [images_per_second(ds, args.batch, args.batches, w) for w in args.workers]
                 for name, ds in sets.items()}
        for name, row in rates.items():
            print(f"{name:<12} {sizes[name] / 1e6:7.1f} " + " ".join(f"{r:18.0f}" for r in row))
        for name in (".rec", "packed"):
            ratios = ", ".join(f"{r / base:.2f}x ({w} workers)"
                               for w, r, base in zip(args.workers, rates[name], rates["JPEG folder"]))
            print(f"ratio {name}/JPEG folder: {ratios}")


if __name__ == "__main__":
    main()
