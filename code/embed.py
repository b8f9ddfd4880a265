"""A folder's face embeddings.

    python code/embed.py --model_path log/<run>/sphereface20_512.pt --dataset data/processed/lfw --output lfw.npy

Every image under --dataset (any depth, aligned at the model's input size; 112x112 crops feed a 112x96
model by dropping 8 columns each side) goes through the model in DataLoader-fed batches. Writes
--output (.npy, float32, one row per image) and beside it the file names, one per line in the same
order, relative to --dataset (`lfw.npy` -> `lfw.names.txt`). Neither file is replaced when it exists
already, unless --overwrite. --mode: plain = the model's embedding f; sphereface = [f, f_flip] (as
test.py's default protocol); insightface = normalise(f + f_flip). Errors are one line (`--debug`: with
the traceback).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from uniformface.cli import add_debug_flag, resolve_device, run_script  # noqa: E402
from uniformface.embedding import EMBEDDING_MODES, check_outputs, embed_folder, save_embeddings  # noqa: E402
from uniformface.evaluate import load_backbone  # noqa: E402


def main(argv=None) -> int:
    return run_script(_main, argv)


def _main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="weights written by train.py")
    parser.add_argument("--dataset", required=True, help="folder of aligned face images")
    parser.add_argument("--output", required=True,
                        help="embeddings file (.npy); the names go to X.names.txt beside X.npy")
    parser.add_argument("--mode", choices=EMBEDDING_MODES, default="plain")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no_progress", action="store_true")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing X.npy / X.names.txt")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if not args.output.endswith(".npy"):
        parser.error(f"--output {args.output}: expected a .npy file name")

    device = str(resolve_device(args.device))
    model, spec, _ = load_backbone(args.model_path, device)
    check_outputs(args.output, args.overwrite)  # before the work, not after it
    embeddings, names = embed_folder(model, args.dataset, spec["input_size"], args.mode, args.batch_size,
                                     args.workers, device, progress=not args.no_progress)
    listing = save_embeddings(args.output, embeddings, names, overwrite=args.overwrite)
    print(f"wrote {args.output} ({embeddings.shape[0]} x {embeddings.shape[1]}, {args.mode}) and {listing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
