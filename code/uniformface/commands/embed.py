"""A folder's face embeddings.

    python code/embed.py --model_path log/<run>/sphereface20_512.pt --dataset data/processed/lfw --output lfw.npy

Every image under --dataset (any depth, aligned at the model's input size; 112x112 crops feed a 112x96
model by dropping 8 columns each side) goes through the model in DataLoader-fed batches. Writes
--output (.npy, float32, one row per image) and beside it the file names, one per line in the same
order, relative to --dataset (`lfw.npy` -> `lfw.names.txt`). Neither file is replaced when it exists
already, unless --overwrite. --mode: plain = the model's embedding f; sphereface = [f, f_flip] (as
test.py's default protocol); insightface = normalise(f + f_flip).
"""
from __future__ import annotations

from ..base.cli import new_parser, run_command
from ..base.devices import AUTO
from ..base.registry import EMBEDDING_MODES

NAME = "embed"


def build_parser():
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--model_path", required=True, help="weights written by train.py")
    parser.add_argument("--dataset", required=True, help="folder of aligned face images")
    parser.add_argument("--output", required=True,
                        help="embeddings file (.npy); the names go to X.names.txt beside X.npy")
    parser.add_argument("--mode", choices=EMBEDDING_MODES, default=EMBEDDING_MODES[0],
                        help="plain f, or f with its mirror's as a protocol combines them")
    parser.add_argument("--batch_size", type=int, default=128, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes that decode the images")
    parser.add_argument("--device", default=AUTO, help="cpu, cuda, cuda:N, or auto (cuda when there is a GPU)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing X.npy / X.names.txt")
    return parser


def run(args, parser) -> int:
    if not args.output.endswith(".npy"):
        parser.error(f"--output {args.output}: expected a .npy file name")
    # torch: only after the arguments
    from ..base.devices import resolve_device
    from ..eval.embedding import check_outputs, embed_folder, save_embeddings
    from ..eval.trained_network import load_backbone

    device = str(resolve_device(args.device))
    model, spec, _ = load_backbone(args.model_path, device)
    check_outputs(args.output, args.overwrite)  # before the work, not after it
    embeddings, names = embed_folder(model, args.dataset, spec["input_size"], args.mode, args.batch_size,
                                     args.workers, device, progress=not args.no_progress)
    listing = save_embeddings(args.output, embeddings, names, overwrite=args.overwrite)
    print(f"wrote {args.output} ({embeddings.shape[0]} x {embeddings.shape[1]}, {args.mode}) and {listing}")
    return 0


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv)
