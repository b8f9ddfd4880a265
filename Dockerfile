# The project in a container, GPU-ready.
# Base: plain Python, not a PyTorch/CUDA image. The torch==2.14.1 wheel on PyPI is a CUDA 13.0 build whose
# CUDA runtime, cuDNN, cuBLAS and NCCL arrive as pip dependencies (nvidia-*-cu13), so requirements.txt
# alone gives the exact stack the tests ran with; a pytorch/pytorch or nvidia/cuda base would add a second
# torch or CUDA toolkit (GBs) that the pinned wheel ignores. The host needs only the NVIDIA driver
# (>= 580, for CUDA 13) and the NVIDIA container toolkit; docker_run.sh passes --gpus all.
# Python 3.11.7: the interpreter the project's .venv is tested with.
FROM python:3.11.7-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /workspace
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY code/ code/
COPY tests/ tests/
COPY bench/ bench/
COPY docs/ docs/
# The files the test suite reads about the repository itself (pyproject, the container files, the docs).
COPY pytest.ini Makefile README.md pyproject.toml Dockerfile .dockerignore docker_build.sh docker_run.sh ./
# data/ and log/ are mounted by docker_run.sh; created here so that the image also runs without them.
RUN mkdir -p data log && chmod 1777 data log
ENV PYTHONPATH=/workspace/code
CMD ["bash"]
