"""Draw trained networks' classes on the unit sphere, side by side: the picture of UniformFace's claim.

    python code/plot_sphere.py --model_path log/a/sphereface4_3.pt log/b/sphereface4_3.pt --dataset DIR
                               [--output hypersphere.png] [--classes C1 C2 ... | --max_classes 10]

DIR is a folder of aligned images DIR/<class>/<image> (test images of classes the networks were trained
on, for the picture the paper draws). For each model, one 3-D panel: every image's feature normalised
to unit length, a dot in its class's colour, and each class's center as a star: the run's own class center
when its weights file keeps one, else the head's class weight, else (a class the network never saw) the
mean direction of its features here. The title gives the mean angle from each center to its nearest
other, measured in the network's own dimensions. A network of more than 3 dimensions is drawn by PCA:
centers and features are projected on the centers' three principal axes (through the origin) and
normalised again, as the title says; angles on such a picture are not the network's. Panels are named as
the result tables name a run (`alpha=1.0/beta=0.5`, from the config.yaml beside the weights) unless
--names. The PNG is written atomically; an existing file is not replaced without --overwrite.
"""
from __future__ import annotations

from pathlib import Path

from ..base.cli import check_png_output, new_parser, run_command
from ..base.devices import AUTO

NAME = "plot_sphere"


def build_parser():
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--model_path", nargs="+", required=True, help="weights files written by train.py")
    parser.add_argument("--dataset", required=True, help="folder of aligned images, DIR/<class>/<image>")
    parser.add_argument("--output", default="hypersphere.png", help="PNG to write")
    parser.add_argument("--names", nargs="+", help="one panel title per model (default: alpha/beta from config.yaml)")
    parser.add_argument("--classes", nargs="+", help="class folders to draw (default: the first --max_classes)")
    parser.add_argument("--max_classes", type=int, default=10, help="classes drawn when --classes is not given")
    parser.add_argument("--batch_size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes that decode the images")
    parser.add_argument("--device", default=AUTO, help="cpu, cuda, cuda:N, or auto (cuda when there is a GPU)")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNG")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    return parser


def panel_names(model_paths) -> list[str]:
    """Each model's run named as the result tables name it (`alpha=1.0/beta=0.5`, from the config.yaml
    beside the weights; runs sharing those get the settings they differ in), else its folder's name."""
    from ..base.config import read_yaml
    from ..tools.report import Run, setting_names

    runs = []
    for path in model_paths:
        saved = Path(path).parent / "config.yaml"
        config = read_yaml(saved) if saved.is_file() else None
        if config is not None and not isinstance(config, dict):
            raise ValueError(f"{saved}: expected a mapping of settings; fix it, or pass --names")
        runs.append(Run(Path(path).parent, {}, config))
    return setting_names(runs)


def run(args, parser) -> int:
    if args.max_classes < 2:
        parser.error(f"--max_classes: need at least 2, got {args.max_classes}")
    check_png_output(parser, args.output, args.dpi, args.overwrite, args.names, args.model_path, "models")
    # torch: only after the arguments
    from ..base.devices import resolve_device
    from ..tools.plots import model_sphere_view, save_png, sphere_figure

    device = str(resolve_device(args.device))
    names = args.names or panel_names(args.model_path)
    views = [model_sphere_view(path, args.dataset, name, args.classes, args.max_classes, device, args.batch_size,
                               args.workers, progress=not args.no_progress)
             for path, name in zip(args.model_path, names)]
    sources = sorted({v.centers_from for v in views})
    note = (f"dots: the unit features of the images in {args.dataset}, one colour per class; stars: "
            f"{'; '.join(sources)}; paler: on the far side of the sphere")
    save_png(sphere_figure(views, note), args.output, args.dpi)
    for view in views:
        print(f"{view.label}: {len(view.classes)} classes, {len(view.features)} images, {view.dims}-d; "
              f"mean nearest-center angle {view.mean_angle:.2f}°" + (f"; {view.projection}" if view.projection else ""))
    print(f"wrote {args.output}")
    return 0


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv)
