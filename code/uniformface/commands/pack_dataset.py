"""Convert a training set for faster loading: decode it once into a packed memory-mapped set, or write
an aligned folder as an insightface-style `.rec` + `.idx`.

    python code/pack_dataset.py --dataset data/processed/CASIA-WebFace --output data/casia   # data/casia.packed/
    python code/pack_dataset.py --dataset data/faces_webface_112x112/train.rec --output data/webface
    python code/pack_dataset.py --dataset data/processed/CASIA-WebFace --output data/casia.rec  # .rec + .idx

`--dataset` is anything `uniformface.data.open_train_set` reads (aligned folder, `.rec`, `.packed`).
The packed set keeps every identity of the source (exclusions apply when training, by name, as for
folders) unless --exclude / --min_images_per_class are given here. Undecodable images are left out and
listed (stdout and `meta.json`); the exit status is still 0. The fallback crops an aligned folder's
preprocess_report.tsv lists (faces the detector missed, aligned with mean landmarks) never train: they are
left out, counted on stdout, and listed in `meta.json`. `.rec` output stores each file's bytes unchanged.
Outputs are written to a temporary name and renamed into place.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..base.cli import new_parser, run_command
from ..base.paths import refuse_overwrite

NAME = "pack_dataset"


def build_parser():
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--dataset", required=True,
                        help="aligned folder <identity>/<file>, X.rec (+ X.idx) or X.packed")
    parser.add_argument("--output", required=True,
                        help="PREFIX: writes PREFIX.packed/; PREFIX.rec: PREFIX.rec + PREFIX.idx (folder input only)")
    parser.add_argument("--exclude", nargs="*", default=[], help="identity names to leave out (default: none)")
    parser.add_argument("--min_images_per_class", type=int, default=0,
                        help="leave out identities with fewer images")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def run(args, parser) -> int:
    from ..data import ImageFolderTrainSet, pack, write_record_file  # torch: only after the arguments

    output = Path(args.output)
    if output.suffix == ".rec":
        refuse_overwrite(output, args.overwrite)
        source = ImageFolderTrainSet(args.dataset, exclude=args.exclude, min_images_per_class=args.min_images_per_class)
        n = write_record_file(output, output.with_suffix(".idx"), [(s.path, s.label) for s in source.samples],
                              progress=not args.no_progress)
        for note in source.check_notes():
            print(f"note: {note}")
        print(f"wrote {n} images of {source.num_classes} classes to {output} and {output.with_suffix('.idx')} "
              f"(label i is the i-th identity folder in sorted name order)")
        return 0
    summary = pack(args.dataset, output, exclude=args.exclude, min_images_per_class=args.min_images_per_class,
                   workers=max(0, args.workers), overwrite=args.overwrite, progress=not args.no_progress)
    for item, reason in summary.skipped:
        print(f"skipped: {item}: {reason}")
    for note in summary.notes:
        print(f"note: {note}")
    print(summary.line())
    return 0


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv)
