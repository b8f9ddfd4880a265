"""Detection alone: our MTCNN cascade (uniformface.align.mtcnn.detect_faces) against facenet-pytorch's own
`detect_face` on the same nets and the same batches of 250x250 photos, alternating, in one process; the
faces found and their landmarks must agree, only the time may differ. On a GPU the difference is mostly
facenet's per-box resize loop (thousands of small kernel launches per batch).

    PYTHONPATH=code .venv/bin/python bench/bench_mtcnn.py [--images 64] [--batch_size 8] [--device cpu] [--rounds 3]
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import detect_face

from bench_align import make_photos
from uniformface.align.face import MIN_FACE_SIZE, SCALE_FACTOR, THRESHOLDS, FaceDetector
from uniformface.base.images import decode_rgb
from uniformface.align.mtcnn import detect_faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a preprocessing worker uses 1)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds; the best of each is kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        names = make_photos(Path(scratch), args.images)
        photos = np.stack([decode_rgb(Path(scratch) / n) for n in names])
    nets = FaceDetector(device=str(device)).mtcnn
    batches = [torch.from_numpy(photos[i:i + args.batch_size]).to(device) for i in range(0, len(photos), args.batch_size)]

    def ours():
        return [face for batch in batches for face in detect_faces(
            batch, nets.pnet, nets.rnet, nets.onet, MIN_FACE_SIZE, THRESHOLDS, SCALE_FACTOR,
            channels_last=device.type == "cpu")]

    def facenets():
        found = []
        for batch in batches:
            boxes, points = detect_face(batch.float(), MIN_FACE_SIZE, nets.pnet, nets.rnet, nets.onet,
                                        list(THRESHOLDS), SCALE_FACTOR, device)
            found += [(np.asarray(b.tolist(), np.float64).reshape(-1, 5),
                       np.asarray(p.tolist(), np.float64).reshape(-1, 5, 2)) for b, p in zip(boxes, points)]
        return found

    times = {"ours": [], "facenet": []}
    with torch.inference_mode():
        for _ in range(args.rounds + 1):  # the first round warms up and is not counted
            for name, run in (("facenet", facenets), ("ours", ours)):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                result = run()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[name].append(time.perf_counter() - start)
                if name == "ours":
                    mine = result
                else:
                    theirs = result
    same_counts = [len(b) for b, _ in mine] == [len(b) for b, _ in theirs]
    difference = 0.0
    if same_counts:
        for (boxes, points), (their_boxes, their_points) in zip(mine, theirs):
            if len(boxes):
                order, their_order = np.lexsort(boxes[:, :2].T), np.lexsort(their_boxes[:, :2].T)
                difference = max(difference, float(np.abs(points[order] - their_points[their_order]).max()))
    best_ours, best_theirs = min(times["ours"][1:]), min(times["facenet"][1:])
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.images} photos 250x250 in batches of "
          f"{args.batch_size}, best of {args.rounds} rounds")
    print(f"facenet detect_face: {best_theirs:.3f} s ({1000 * best_theirs / args.images:.1f} ms/image)")
    print(f"ours (mtcnn.py):     {best_ours:.3f} s ({1000 * best_ours / args.images:.1f} ms/image)")
    print(f"speed-up {best_theirs / best_ours:.2f}x; faces per image identical: {same_counts}; "
          f"max landmark difference {difference:.2e} px")


if __name__ == "__main__":
    main()
