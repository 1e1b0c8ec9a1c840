# The GPU worker image: xich, flows/ and the Prefect worker, on PyPI's torch (the CUDA 13 build).
# torch's nvidia-* wheels carry the CUDA libraries, so no CUDA base image: a GPU host needs only its NVIDIA
# driver (>= 580.65.06 for CUDA 13) and the NVIDIA container toolkit. Without a GPU the audit runs on the CPU.
# From the repository root:  docker build -f docker/worker.Dockerfile -t xich-worker:latest .
#
# Layers, slowest first: torch (~3 GB; rebuilt only when its pins in pyproject.toml change), the other
# dependencies (when pyproject.toml changes), then the code (seconds). The image runs as `xich` (uid 10001),
# from /opt/xich, the working directory of the GPU deployments in prefect.yaml. It has no HEALTHCHECK of its
# own: it is a Prefect worker in compose.yaml (which checks the worker's health server there), a flow-run
# container in the docker pool of prefect.yaml, and a one-off CLI, and no one probe fits all three.

FROM python:3.11-slim-bookworm AS requirements
WORKDIR /src
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py --only torch torchvision > torch.txt \
    && python requirements.py --without torch torchvision > rest.txt \
    && python requirements.py --build-system > build.txt

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# Each COPY below is keyed on the file's content: a change elsewhere in pyproject.toml does not reach torch.
COPY --from=requirements /src/torch.txt /tmp/torch.txt
RUN pip install -r /tmp/torch.txt
COPY --from=requirements /src/rest.txt /src/build.txt /tmp/
RUN pip install -r /tmp/rest.txt -r /tmp/build.txt -c /tmp/torch.txt \
    && pip check

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_HOME=/home/xich/.prefect \
    XICH_CACHE_DIR=/home/xich/.cache/xich
RUN useradd --create-home --uid 10001 --user-group xich
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/xich
COPY pyproject.toml alembic.ini prefect.yaml ./
COPY migrations/ migrations/
COPY service/ service/
COPY flows/ flows/
# Editable, as `make install` does: migrations/ is found beside service/ (xich.migrate), and prefect.yaml's
# GPU deployments load flows/audit.py from /opt/xich. Offline: setuptools came with the dependencies.
RUN pip install --no-deps --no-index --no-build-isolation -e . \
    && rm -rf /opt/xich/build
USER 10001:10001
RUN mkdir -p "$PREFECT_HOME" "$XICH_CACHE_DIR"
CMD ["prefect", "worker", "start", "--pool", "xich-process", "--type", "process", "--limit", "1"]
