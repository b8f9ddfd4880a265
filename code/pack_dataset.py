"""Convert a training set for faster loading: decode it once into a packed memory-mapped set, or write
an aligned folder as an insightface-style `.rec` + `.idx`.

    python code/pack_dataset.py --dataset data/processed/CASIA-WebFace --output data/casia   # data/casia.packed/
    python code/pack_dataset.py --dataset data/faces_webface_112x112/train.rec --output data/webface
    python code/pack_dataset.py --dataset data/processed/CASIA-WebFace --output data/casia.rec  # .rec + .idx

`--dataset` is anything `uniformface.data.open_train_set` reads (aligned folder, `.rec`, `.packed`).
The packed set keeps every identity of the source (exclusions apply when training, by name, as for
folders) unless --exclude / --min_images_per_class are given here. Undecodable images are left out and
listed (stdout and `meta.json`); the exit status is still 0. `.rec` output stores each file's bytes unchanged.
Outputs are written to a temporary name and renamed into place.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from uniformface.data import ImageFolderTrainSet  # noqa: E402
from uniformface.packed import pack  # noqa: E402
from uniformface.recordio import write_record_file  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, 
                        help="aligned folder <identity>/<file>, X.rec (+ X.idx) or X.packed")
    parser.add_argument("--output", required=True,
                        help="PREFIX: writes PREFIX.packed/; PREFIX.rec: PREFIX.rec + PREFIX.idx (folder input only)")
    parser.add_argument("--exclude", nargs="*", default=[], help="identity names to leave out")
    parser.add_argument("--min_images_per_class", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    output = Path(args.output)
    try:
        if output.suffix == ".rec":
            if output.exists() and not args.overwrite:
                raise FileExistsError(f"{output} exists (pass --overwrite to replace it)")
            source = ImageFolderTrainSet(args.dataset, exclude=args.exclude,
                                         min_images_per_class=args.min_images_per_class)
            n = write_record_file(output, output.with_suffix(".idx"), [(s.path, s.label) for s in source.samples],
                                  progress=not args.no_progress)
            print(f"wrote {n} images of {source.num_classes} classes to {output} and {output.with_suffix('.idx')} "
                  f"(label i is the i-th identity folder in sorted name order)")
            return 0
        summary = pack(args.dataset, output, exclude=args.exclude, min_images_per_class=args.min_images_per_class,
                       workers=max(0, args.workers), overwrite=args.overwrite, progress=not args.no_progress)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"pack_dataset: error: {exc}", file=sys.stderr)
        return 2
    for item, reason in summary.skipped:
        print(f"skipped: {item}: {reason}")
    print(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
