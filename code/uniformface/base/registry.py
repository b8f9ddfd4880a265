"""The names a config file or a command line may give, each list written once, without torch.

`config.py` validates against these lists and the scripts offer them as `choices` before anything heavy is
imported (a script's `--help` imports no torch); the builders are looked up from the same tables:
`models.build_model` builds `BACKBONES[name]` (a SphereFace-like net or an IResNet), `heads.build_head` the
class `HEAD_CLASSES[name]` names, `losses.uniform_loss` accepts `UNIFORM_REDUCTIONS`, `ASoftmax` accepts
`ASOFTMAX_GRADIENTS`, the LFW protocol (`protocols.py`) accepts `PROTOCOLS` and the feature extraction
(`embedding.py`) `EMBEDDING_MODES`.
"""
from __future__ import annotations

from typing import NamedTuple


class Backbone(NamedTuple):
    """What `models.build_model` needs to build a named network (docs: `models.py`, `iresnet.py`)."""

    units: tuple[int, int, int, int]  # residual units in each of the four stages (64, 128, 256, 512 channels)
    pool_stages: bool  # True: a stage opens with 2x2/2 max-pool + 3x3/1 conv; False: a 3x3/2 conv (SphereFace)
    family: str = "sphereface"  # "sphereface": models.FaceNet; "iresnet": iresnet.IResNet (pool_stages unused)


BACKBONES: dict[str, Backbone] = {
    # SphereFace-N, official sphereface_model.prototxt (Liu et al., CVPR 2017, Table 2)
    "sphereface4": Backbone((0, 0, 0, 0), False),
    "sphereface10": Backbone((0, 1, 2, 0), False),
    "sphereface20": Backbone((1, 2, 4, 1), False),
    "sphereface36": Backbone((2, 4, 8, 2), False),
    "sphereface64": Backbone((3, 8, 16, 3), False),
    # the [2, 3, 5, 2] network read off UniformFace's Fig. 3 (Duan et al., CVPR 2019)
    "uniformface": Backbone((2, 3, 5, 2), True),
    # insightface's IResNet-N, recognition/arcface_torch/backbones/iresnet.py (units per stage as there)
    "iresnet18": Backbone((2, 2, 2, 2), False, "iresnet"),
    "iresnet34": Backbone((3, 4, 6, 3), False, "iresnet"),
    "iresnet50": Backbone((3, 4, 14, 3), False, "iresnet"),
    "iresnet100": Backbone((3, 13, 30, 3), False, "iresnet"),
}
MODEL_NAMES = tuple(BACKBONES)

# classification head name (config key loss.name) -> the class in heads.py that implements it
HEAD_CLASSES: dict[str, str] = {"sphereface": "ASoftmax", "cosface": "CosFace", "arcface": "ArcFace"}
HEAD_NAMES = tuple(HEAD_CLASSES)

# A-Softmax backward (config key loss.gradient): the official Caffe layer's Backward_cpu, or autograd
ASOFTMAX_GRADIENTS = ("official", "autograd")

# Eq. 6's reduction (config key uniform_reduction): per center, or the mean over ordered pairs as printed
UNIFORM_REDUCTIONS = ("center", "pairs")

# where the class centers come from (config key center_mode): features (the paper) or the head's weights
CENTER_MODES = ("feature", "weight")

# LFW verification protocols: SphereFace's evaluation.m, insightface's verification.py
PROTOCOLS = ("sphereface", "insightface")

# test.py --benchmark: LFW pairs.txt (and .bin sets), YouTube Faces splits.txt, IJB-B / IJB-C 1:1 (docs/DESIGN.md §7)
BENCHMARKS = ("lfw", "ytf", "ijbb", "ijbc")

# preprocess.py --fallback: what to do with a face the detector missed (preprocessing.choose_fallback)
FALLBACKS = ("auto", "mean", "skip")

# test.py --baseline: the floors a trained network must clear (trained_network.load_embedder): raw pixels,
# or the same network at its initialisation
BASELINES = ("raw", "untrained")

# test.py --tar_rule: IJB's TAR at each FAR target, named in the results as `tar_rule` (docs/DESIGN.md §7.8):
# "at_most", the best TAR whose FAR does not exceed the target (the default); "insightface", the ROC point
# insightface's ijb_11.py reports, the kept point whose FAR is nearest the target
TAR_RULES = ("at_most", "insightface")

# a `.bin` set of val_targets is logged as val/<file stem>, in metrics.jsonl and TensorBoard alike
VAL_PREFIX = "val/"

# features of one image: the network's f, or f combined with its mirror's as each protocol does
EMBEDDING_MODES = ("plain", *PROTOCOLS)
