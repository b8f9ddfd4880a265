"""uniformface.base.defaults: the settings the scripts show as defaults are the library's own, read without torch."""
import json
import os
import subprocess
import sys
from pathlib import Path

from uniformface.base import defaults
ROOT = Path(__file__).resolve().parents[1]


def test_the_library_uses_these_very_settings():
    from uniformface.align import face as align, preprocessing
    from uniformface.tools import export

    for name in ("MIN_FACE_SIZE", "THRESHOLDS", "SCALE_FACTOR", "DETECTION_MAX_SIDE"):
        assert getattr(align, name) is getattr(defaults, name), name
    assert preprocessing.SMALLEST_MIN_FACE_SIZE is defaults.SMALLEST_MIN_FACE_SIZE
    assert (export.DEFAULT_OPSET, export.DEFAULT_TOLERANCE) == (defaults.DEFAULT_OPSET, defaults.DEFAULT_TOLERANCE)
    assert export.export_onnx.__defaults__[0] == defaults.DEFAULT_OPSET


def test_the_detector_settings_are_sphereface_s_and_the_scripts_show_them():
    # face_detect_demo.m of the SphereFace release: minsize = 20; threshold = [0.6 0.7 0.9]; factor = 0.85
    assert (defaults.MIN_FACE_SIZE, defaults.THRESHOLDS, defaults.SCALE_FACTOR) == (20, (0.6, 0.7, 0.9), 0.85)
    from uniformface.commands import export, preprocess

    shown = {a.dest: a.default for a in preprocess.build_parser()._actions}
    assert (shown["min_face_size"], shown["thresholds"], shown["factor"], shown["max_side"]) == \
        (20, [0.6, 0.7, 0.9], 0.85, defaults.DETECTION_MAX_SIDE)
    shown = {a.dest: a.default for a in export.build_parser()._actions}
    assert (shown["opset"], shown["tolerance"]) == (defaults.DEFAULT_OPSET, defaults.DEFAULT_TOLERANCE)


def test_reading_them_imports_no_torch():
    probe = "import json, sys; import uniformface.base.defaults; print(json.dumps('torch' in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "code")})
    assert done.returncode == 0 and json.loads(done.stdout) is False, done.stderr
