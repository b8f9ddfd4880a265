"""uniformface.base.registry: each list of names is written once; the builders, the config's validation and the
scripts' choices all read it, and reading it imports no torch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from uniformface.base import registry
from uniformface.base.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_registry_imports_no_torch():
    probe = ("import json, sys; import uniformface.base.registry, uniformface.base.config; "
             "print(json.dumps('torch' in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "code")})
    assert done.returncode == 0 and json.loads(done.stdout) is False, done.stderr


@pytest.mark.slow
def test_every_model_name_builds_its_backbone_and_no_other_name_does():
    import torch

    from uniformface.nn.iresnet import IResNet
    from uniformface.nn.models import FaceNet, build_model

    # SphereFace-20's residual units per stage (official sphereface_model.prototxt: conv1_x 1, conv2_x 2,
    # conv3_x 4, conv4_x 1), the [2, 3, 5, 2] of UniformFace's Fig. 3, insightface's IResNet-50 [3, 4, 14, 3]
    assert registry.BACKBONES["sphereface20"].units == (1, 2, 4, 1)
    assert registry.BACKBONES["uniformface"] == registry.Backbone((2, 3, 5, 2), True)
    assert registry.BACKBONES["iresnet50"] == registry.Backbone((3, 4, 14, 3), False, "iresnet")
    assert {b.family for b in registry.BACKBONES.values()} == {"sphereface", "iresnet"}
    for name in registry.MODEL_NAMES:
        backbone = registry.BACKBONES[name]
        model = build_model(name, 8)
        unit_class = {"sphereface": "ResidualUnit", "iresnet": "IBasicBlock"}[backbone.family]
        residual_units = sum(1 for m in model.modules() if type(m).__name__ == unit_class)
        assert isinstance(model, {"sphereface": FaceNet, "iresnet": IResNet}[backbone.family]), name
        assert residual_units == sum(backbone.units), name
        pools = sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
        assert pools == (4 if backbone.pool_stages else 0), name
    with pytest.raises(ValueError, match="unknown model name 'sphereface30'; valid names: sphereface4, "):
        build_model("sphereface30")


def test_every_head_name_builds_the_class_the_registry_names():
    from uniformface.nn import heads
    assert list(heads.HEADS) == list(registry.HEAD_NAMES)
    for name, class_name in registry.HEAD_CLASSES.items():
        assert type(heads.build_head(name, 4, 3)) is getattr(heads, class_name)
    with pytest.raises(ValueError, match="unknown head 'softmax'; valid names: sphereface, cosface, arcface"):
        heads.build_head("softmax", 4, 3)


def test_the_library_checks_read_the_registry():
    import torch

    from uniformface.nn import heads, losses
    from uniformface.eval.embedding import check_mode
    from uniformface.eval.protocols import check_protocol

    # A-Softmax's gradient and the uniform loss's reduction are checked against the registry's tuples
    # themselves: every registry name is accepted, and a refusal lists exactly the registry's names.
    for gradient in registry.ASOFTMAX_GRADIENTS:
        assert heads.ASoftmax(4, 3, gradient=gradient).gradient == gradient
    with pytest.raises(ValueError, match=f"gradient must be one of {', '.join(registry.ASOFTMAX_GRADIENTS)}, got"):
        heads.ASoftmax(4, 3, gradient="caffe")
    centers = torch.eye(3)
    for reduction in registry.UNIFORM_REDUCTIONS:
        assert torch.isfinite(losses.uniform_loss(centers, reduction=reduction))
    with pytest.raises(ValueError) as refused:
        losses.uniform_loss(centers, reduction="mean")
    assert f"reduction must be one of {registry.UNIFORM_REDUCTIONS}, got 'mean'" in str(refused.value)
    for mode in registry.EMBEDDING_MODES:
        check_mode(mode)
    for protocol in registry.PROTOCOLS:
        check_protocol(protocol)
    with pytest.raises(ValueError, match="expected one of plain, sphereface, insightface"):
        check_mode("flip")
    with pytest.raises(ValueError, match="expected one of sphereface, insightface"):
        check_protocol("plain")  # an embedding mode, not an LFW protocol


@pytest.mark.parametrize("key, names", [("model_name", registry.MODEL_NAMES), ("loss.name", registry.HEAD_NAMES),
                                        ("loss.gradient", registry.ASOFTMAX_GRADIENTS),
                                        ("center_mode", registry.CENTER_MODES),
                                        ("uniform_reduction", registry.UNIFORM_REDUCTIONS)])
def test_config_validation_accepts_exactly_the_registry_names(key, names):
    for name in names:
        assert load_config(None, [f"{key}={name}"]) is not None
    with pytest.raises(ConfigError, match=rf"key '{key}' is 'nonesuch'; choose one of {', '.join(names)}$"):
        load_config(None, [f"{key}=nonesuch"])


def test_the_scripts_offer_the_registry_names():
    from uniformface.commands import ablate, embed, preprocess, test

    def choices(parser, option):
        (action,) = [a for a in parser._actions if option in a.option_strings]
        return tuple(action.choices), action.default

    assert choices(test.build_parser(), "--protocol") == (registry.PROTOCOLS, "sphereface")
    assert choices(test.build_parser(), "--benchmark") == (registry.BENCHMARKS, "lfw")
    assert choices(ablate.build_parser(), "--protocol") == (registry.PROTOCOLS, "sphereface")
    assert choices(test.build_parser(), "--baseline") == (registry.BASELINES, None)
    assert choices(embed.build_parser(), "--mode") == (registry.EMBEDDING_MODES, "plain")
    assert choices(preprocess.build_parser(), "--fallback") == (registry.FALLBACKS, "auto")
