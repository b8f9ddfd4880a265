"""A folder's face embeddings.

    python code/embed.py --model_path log/<run>/sphereface20_512.pt --dataset data/processed/lfw --output lfw.npy

Every image under --dataset (any depth, aligned at the model's input size; 112x112 crops feed a 112x96
model by dropping 8 columns each side) goes through the model in DataLoader-fed batches. Writes
--output (.npy, float32, one row per image) and beside it the file names, one per line in the same
order, relative to --dataset (`lfw.npy` -> `lfw.txt`). --mode: plain = the model's embedding f;
sphereface = [f, f_flip] (as test.py's default protocol); insightface = normalise(f + f_flip).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from uniformface.embedding import EMBEDDING_MODES, embed_folder, save_embeddings  # noqa: E402
from uniformface.evaluate import load_backbone  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="weights written by train.py")
    parser.add_argument("--dataset", required=True, help="folder of aligned face images")
    parser.add_argument("--output", required=True, help="embeddings file (.npy); names go to the sibling .txt")
    parser.add_argument("--mode", choices=EMBEDDING_MODES, default="plain")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    if not args.output.endswith(".npy"):
        parser.error(f"--output {args.output}: expected a .npy file name")

    try:
        model, spec, _ = load_backbone(args.model_path, args.device)
        embeddings, names = embed_folder(model, args.dataset, spec["input_size"], args.mode, args.batch_size,
                                         args.workers, args.device, progress=not args.no_progress)
        listing = save_embeddings(args.output, embeddings, names)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({embeddings.shape[0]} x {embeddings.shape[1]}, {args.mode}) and {listing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
