"""Fixed settings that the library uses and the scripts show as their options' defaults, written once and
torch-free, so that a script's `--help` shows them without importing torch or the detector.

`align/face.py`, `preprocessing.py` and `export.py` use them (and re-export them under the same names).
"""
from __future__ import annotations

# Official SphereFace detector settings (face_detect_demo.m: minsize 20, threshold [0.6 0.7 0.9],
# factor 0.85); facenet-pytorch's own defaults are [0.6, 0.7, 0.7] and 0.709.
MIN_FACE_SIZE = 20
THRESHOLDS = (0.6, 0.7, 0.9)
SCALE_FACTOR = 0.85

# Below the P-net's 12 px window MTCNN's pyramid enlarges every image by 12 / min_face_size.
SMALLEST_MIN_FACE_SIZE = 12

# Larger images are reduced (area average) before detection and warping: MTCNN's cost grows with the pixel
# count, and an aligned face is 112 px tall, so more resolution only adds aliasing in the bilinear warp.
DETECTION_MAX_SIDE = 1600

# ONNX export (export.py): the opset written, and the worst element-wise difference allowed between
# onnxruntime and PyTorch, relative to the largest embedding magnitude. Both sides compute in float32 and
# differ only in summation order (oneDNN/cuDNN vs onnxruntime's MLAS kernels): each layer adds a relative
# error of a few float32 epsilons (1.2e-7) times sqrt(fan_in) (fc5: 21,504 terms, ~150) at worst, ~2e-5
# summed over 21 layers. Measured: 1e-6 to 3e-6 for SphereFace-20 (at init, after 20 steps, 112x112),
# SphereFace-4 and the figure net. 1e-4 passes that with a margin, yet fails a mismatch as small as one
# layer's weights off by 0.1% (the test checks that); a wrong op or layout gives errors of order 1.
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
