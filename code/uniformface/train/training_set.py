"""The training set as a run meets it: checked once when opened (image sizes, classes, labels), then the
unusable images that training meets, the first few named on the console, all of them counted."""
from __future__ import annotations

import logging

import numpy as np

from ..base.config import Config
from ..data import check_images

logger = logging.getLogger(__name__)


def check_training_set(dataset, cfg: Config, report: bool) -> None:
    """The images' sizes against `input_size` (what is skipped is named when `report`), at least two
    classes, and every label in [0, num_classes), checked once, here: the training step takes the labels
    as they come (checking each batch's would read them back from the device). ValueError otherwise."""
    check = check_images(dataset, cfg.input_size, cfg.dataset.train)
    if report:
        for line in check.lines(cfg.dataset.train):
            logger.warning(line)
    n = dataset.num_classes
    if n < 2:
        raise ValueError(f"training set {cfg.dataset.train} has {n} class; at least 2 are needed")
    labels = getattr(dataset, "labels", None)  # packed / RecordIO sets hold them as one array
    if labels is not None:
        labels = np.asarray(labels)
        outside = np.flatnonzero((labels < 0) | (labels >= n))
        indices = outside[:1].tolist()
    else:
        indices = range(len(dataset))
    for index in indices:
        label = dataset.label(index)
        if not 0 <= label < n:
            raise ValueError(f"training set {cfg.dataset.train}: {dataset.describe(index)} has "
                             f"label {label}, outside [0, {n})")


class SkippedImages:
    """The unusable images that training meets: the first five not named before training are named on the
    console, the rest only counted (metrics.jsonl's broken_images)."""

    def __init__(self, dataset, train_path: str):
        self.train_path = train_path
        # the images skipped when the set was checked were named then; only new ones are named here
        self.named = {f"{dataset.describe(i)}: {why}" for i, why in dataset.skip.items()}
        self.new = 0

    def met(self, problems: list[str]) -> None:
        for problem in problems:
            if problem in self.named:
                continue
            self.new += 1
            if self.new <= 5:
                self.named.add(problem)
                logger.warning(f"warning: skipped a training image: {problem}")
            elif self.new == 6:
                logger.warning("warning: more training images cannot be used and are skipped; metrics.jsonl "
                               "counts them (broken_images)")

    def nothing_decodes(self, batches: int, broken_images: int, several_ranks: bool) -> str:
        """The message for `batches` batches in a row of which no image could be used."""
        named = sorted(self.named)[:3]
        example = f", e.g. {'; '.join(named)}" if named else ""
        return (f"training set {self.train_path}: no image of the last {batches} batches could be used "
                f"{'(on one process at least) ' if several_ranks else ''}"
                f"({broken_images} unreadable or wrong-sized images met so far{example}); it holds no "
                "decodable aligned face of input_size: check the files (preprocess.py writes such a folder)")
