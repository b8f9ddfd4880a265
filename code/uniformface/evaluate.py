"""LFW-style evaluation of a trained network: batched, DataLoader-fed feature extraction with the
flip the protocol asks for, then `verification.kfold_accuracy` over `pairs.txt` (SPEC §8)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .checkpoint import load_weights
from .data import ImageListDataset
from .models import build_model, normalize_pixels
from .pairs import Pair, missing_images, read_pairs, unique_images
from .verification import combine_flip, kfold_accuracy, pair_scores, roc_metrics


def load_backbone(model_path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict, dict]:
    """Rebuild the network from the spec stored in the weights file (not from its name)."""
    payload = load_weights(model_path)
    spec = payload["spec"]
    model = build_model(spec["model_name"], spec["emb_dim"], tuple(spec["input_size"]))
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), spec, payload


@torch.no_grad()
def extract(embed: Callable[[torch.Tensor], torch.Tensor], root: str | Path, paths: Sequence[str],
            batch_size: int = 128, num_workers: int = 2, device: str = "cpu", progress: bool = True
            ) -> tuple[np.ndarray, np.ndarray]:
    """Features of every image and of its horizontal mirror: (f, f_flip), float32 (N, D) each."""
    from tqdm import tqdm

    loader = DataLoader(ImageListDataset(root, paths), batch_size=batch_size, num_workers=num_workers,
                        pin_memory=device.startswith("cuda"))
    plain, flipped = [], []
    for images, _ in tqdm(loader, desc="features", unit="batch", disable=not progress, dynamic_ncols=True):
        x = normalize_pixels(images.to(device, non_blocking=True))
        both = embed(torch.cat([x, x.flip(-1)])).float().cpu()
        plain.append(both[: len(x)])
        flipped.append(both[len(x):])
    return torch.cat(plain).numpy(), torch.cat(flipped).numpy()


def model_embedder(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return model


def raw_pixel_embedder(images: torch.Tensor) -> torch.Tensor:
    """The baseline a face representation must beat: the normalised pixels themselves."""
    return images.flatten(1)


def evaluate_pairs(embed: Callable[[torch.Tensor], torch.Tensor], root: str | Path, pairs_path: str | Path,
                   protocol: str = "sphereface", allow_missing: bool = False, batch_size: int = 128,
                   num_workers: int = 2, device: str = "cpu", progress: bool = True) -> dict:
    """Verification accuracy over `pairs.txt`. A missing image is an error listing every missing file;
    with `allow_missing` such pairs count as wrong and the folds stay as `pairs.txt` defines them."""
    pairs: list[Pair] = read_pairs(pairs_path)
    missing = missing_images(pairs, root)
    if missing and not allow_missing:
        shown = "\n  ".join(str(m) for m in missing[:20])
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise FileNotFoundError(f"{len(missing)} image(s) of {pairs_path} missing under {root}:\n  {shown}{more}\n"
                                "(pass --allow_missing to count their pairs as wrong)")
    missing_set = set(missing)
    present = [p for p in unique_images(pairs) if p not in missing_set]
    f, f_flip = extract(embed, root, present, batch_size, num_workers, device, progress)
    features = combine_flip(f, f_flip, protocol)
    row = {p: i for i, p in enumerate(present)}
    usable = np.array([p.left in row and p.right in row for p in pairs])
    dim = features.shape[1]
    # A pair with a missing image keeps its place (fold boundaries unchanged) with a zero feature.
    left = np.zeros((len(pairs), dim), np.float32)
    right = np.zeros((len(pairs), dim), np.float32)
    idx = np.flatnonzero(usable)
    left[idx] = features[[row[pairs[i].left] for i in idx]]
    right[idx] = features[[row[pairs[i].right] for i in idx]]
    is_same = np.array([p.is_same for p in pairs])
    n_folds = max(p.fold for p in pairs) + 1
    result = kfold_accuracy(left, right, is_same, protocol=protocol, n_folds=n_folds,
                            invalid=~usable if (~usable).any() else None)
    out = result.to_dict()
    scores = pair_scores(left[idx], right[idx], protocol)
    out.update(roc_metrics(scores, is_same[idx]))
    out.update(n_pairs=len(pairs), n_missing_pairs=int((~usable).sum()), missing_images=[str(m) for m in missing])
    return out
