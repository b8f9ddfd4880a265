"""UniformFace (Duan, Lu, Zhou, CVPR 2019) on SphereFace (Liu et al., CVPR 2017), in PyTorch."""

__version__ = "0.1.0"
