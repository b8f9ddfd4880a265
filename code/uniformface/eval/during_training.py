"""What a run evaluates while it trains: the trainer's `evaluators` (`train.metrics.Evaluator`), built from
the run's config, so that the training loop itself imports no evaluation code.

- The LFW protocol on the aligned LFW folder (`dataset.test`, `dataset.pairs`), logged as `lfw_accuracy`
  and `lfw_accuracy_std`, when `eval_every` is set and the folder is named.
- insightface's protocol on each `.bin` set of `val_targets` (arcface_torch's key of that name), logged as
  `val/<file stem>`: the accuracy, a fraction, computed as `test.py --bin` computes it (`evaluate.evaluate_bin`:
  the same decoding and template crop, features of image + mirror combined as normalise(f + f_flip) in
  batches of test.py's default size, 10 folds), so that the last figure of a run equals what test.py
  reports for its final weights. Each set is read and decoded once, on the process that evaluates (the
  main one under torchrun), and held in memory as uint8 (a 12,000-image set at 112x112: 0.45 GB).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..base.config import Config, check_evaluation_files, evaluates_lfw_folder
from ..base.registry import VAL_PREFIX
from .binfile import read_bin
from .embedding import EncodedImages, extract_features
from .evaluate import BIN_FOLDS, evaluate_pairs
from .protocols import kfold_accuracy

log = logging.getLogger(__name__)

EVALUATION_BATCH = 128  # test.py's --batch_size default: the same batches give the same float32 features


def training_evaluators(cfg: Config, load: bool = True) -> list[Callable[[nn.Module, int], dict[str, float]]]:
    """The evaluations of a run (none when `eval_every` is 0): the LFW folder's, then one per `val_targets`
    set, in the config's order. A missing file is a ConfigError naming its key (`config.check_evaluation_files`).
    `load`: read and decode the `.bin` sets now (a damaged one is a ValueError naming it, before the run
    starts); processes that never evaluate (torchrun's other ranks) pass False and hold nothing, while
    keeping the same list, since every rank must agree on whether an evaluation point comes."""
    if not cfg.eval_every:
        return []
    check_evaluation_files(cfg)
    evaluators: list = []
    if evaluates_lfw_folder(cfg):
        evaluators.append(LfwFolder(cfg.dataset.test, cfg.dataset.pairs))
    sets = [BinSet(path, tuple(cfg.input_size), cfg.num_workers) for path in cfg.val_targets]
    if load and sets:
        for bin_set in sets:
            bin_set.load()
        pairs = ", ".join(f"{s.name} ({len(s.issame):,} pairs)" for s in sets)
        held = sum(s.images.numel() for s in sets) / 2 ** 30
        log.info(f"val_targets: {pairs} decoded once and held in memory ({held:.2f} GiB), evaluated every "
                 f"{cfg.eval_every} iterations as {', '.join(VAL_PREFIX + s.name for s in sets)}")
    return evaluators + sets


def backbone_device(backbone: nn.Module) -> str:
    return str(next(backbone.parameters()).device)


class LfwFolder:
    """The sphereface protocol (test.py's default) on an aligned LFW folder and its pairs.txt, as test.py
    computes it; the images are read from disk at each evaluation."""

    def __init__(self, root: str | Path, pairs: str | Path):
        self.root, self.pairs = root, pairs

    def __call__(self, backbone: nn.Module, iteration: int) -> dict[str, float]:
        result = evaluate_pairs(backbone, self.root, self.pairs, num_workers=0, device=backbone_device(backbone),
                                progress=False)
        return {"lfw_accuracy": result["accuracy_mean"], "lfw_accuracy_std": result["accuracy_std"]}


class DecodedImages(Dataset):
    """Images already decoded and fitted, one uint8 tensor (N, 3, h, w); items (image, index) as
    `embedding.EncodedImages` gives them."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], index


class BinSet:
    """One insightface `.bin` set under insightface's protocol, as `test.py --bin` evaluates it; its images
    are decoded once (`load`, else at the first call) and fitted to the network's input."""

    def __init__(self, path: str | Path, input_size: Sequence[int], num_workers: int = 0):
        self.path, self.input_size, self.num_workers = Path(path), tuple(input_size), num_workers
        self.name = self.path.stem
        self.images: torch.Tensor | None = None
        self.issame: np.ndarray | None = None

    def load(self) -> None:
        """Read and decode the set (a ValueError naming the file and image when one cannot be used)."""
        encoded, issame = read_bin(self.path, decode=False)
        if len(issame) < BIN_FOLDS:
            raise ValueError(f"{self.path}: {len(issame)} pairs; insightface's protocol needs at least {BIN_FOLDS} "
                             f"(one per fold)")
        # the decode and the template crop of test.py --bin (`EncodedImages`), spread over the loader's workers
        loader = DataLoader(EncodedImages(encoded, self.input_size, source=str(self.path)), batch_size=256,
                            num_workers=self.num_workers)
        images = None
        for batch, index in loader:
            if images is None:  # filled in place: no second copy of the set while it is gathered
                images = torch.empty((len(encoded), *batch.shape[1:]), dtype=torch.uint8)
            images[index] = batch
        self.images, self.issame = images, issame

    def accuracy(self, embed: Callable[[torch.Tensor], torch.Tensor], device: str) -> float:
        """The 10-fold accuracy (a fraction) of `embed` on the set: `evaluate.evaluate_bin`'s figure."""
        if self.images is None:
            self.load()
        features = extract_features(embed, DecodedImages(self.images), "insightface", EVALUATION_BATCH, 0, device,
                                    False)
        return kfold_accuracy(features[0::2], features[1::2], self.issame, protocol="insightface",
                              n_folds=BIN_FOLDS).accuracy_mean

    def __call__(self, backbone: nn.Module, iteration: int) -> dict[str, float]:
        return {VAL_PREFIX + self.name: self.accuracy(backbone, backbone_device(backbone))}
