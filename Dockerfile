# The project in a container. torch 2.14.1 from PyPI is a CUDA build that carries its own CUDA
# libraries, so a plain Python base plus the pinned requirements gives a GPU-ready image
# (run it with the NVIDIA container toolkit: docker_run.sh passes --gpus all).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /workspace
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY code/ code/
COPY tests/ tests/
COPY bench/ bench/
COPY pytest.ini Makefile README.md ./
ENV PYTHONPATH=/workspace/code
CMD ["bash"]
