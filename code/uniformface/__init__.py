"""UniformFace (Duan, Lu, Zhou, CVPR 2019) on SphereFace (Liu et al., CVPR 2017), in PyTorch.

    from uniformface import build_model, build_head, uniform_loss, ClassCenters, load_config, Trainer
    from uniformface import ASoftmax, CosFace, ArcFace, kfold_accuracy, open_train_set, read_splits

Where each lives is the package's own business (`_EXPORTS` below names it). The names are loaded on first use, so that `import uniformface.base.config` (or a script's `--help`)
does not import torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "build_model": "nn.models",
    "build_head": "nn.heads",
    "uniform_loss": "nn.losses",
    "ClassCenters": "nn.centers",
    "load_config": "base.config",
    "Trainer": "train.trainer",
    "ASoftmax": "nn.heads",
    "CosFace": "nn.heads",
    "ArcFace": "nn.heads",
    "kfold_accuracy": "eval.protocols",
    "open_train_set": "data",
    "read_splits": "eval.ytf",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
