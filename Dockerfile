# rayline's runtime image: Ray, torch, MLflow and rayline, with the shipped specs. The KubeRay manifests in
# deploy/kuberay/ run it as every Ray node (head and workers):
#   docker build -t rayline:0.1.0 .
FROM python:3.11-slim

# wget: KubeRay's probes call the Ray node's health endpoints with it
RUN apt-get update && apt-get install -y --no-install-recommends wget && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 ray
WORKDIR /home/ray/rayline

# torch first, pinned as everywhere else (on PyPI this is the CUDA build, which the GPU nodes use)
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md ./
COPY platform platform
RUN pip install --no-cache-dir .
COPY pipelines pipelines
COPY tuning tuning
COPY serving serving

USER ray
# Ray's token authentication stays on: KubeRay (authOptions: token) gives every container the token
ENV RAY_AUTH_MODE=token
