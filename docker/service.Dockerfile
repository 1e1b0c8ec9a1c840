# The service image: the registry hooks receiver (`xich serve-hooks`), migrations (`xich db upgrade`), and the
# light CLI (`xich register`, `xich history`, `xich db`), with the Prefect client for `xich register --audit`.
# No torch, torchvision, grad-cam, scikit-learn or matplotlib: these entry points import none of them
# (tests/test_imports.py), so the image is a few hundred MB instead of several GB. `xich audit`, `xich train`
# and the flows need the worker image. From the repository root:
#   docker build -f docker/service.Dockerfile -t xich-service:latest .
#
# No HEALTHCHECK here: the image is a long-running receiver in compose.yaml (which probes its /health there) and
# a one-shot migration or CLI, where a probe would mean nothing.

FROM python:3.11-slim-bookworm AS requirements
WORKDIR /src
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py --without torch torchvision grad-cam scikit-learn matplotlib > light.txt \
    && python requirements.py --build-system > build.txt

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY --from=requirements /src/light.txt /src/build.txt /tmp/
RUN pip install -r /tmp/light.txt -r /tmp/build.txt \
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
# Editable, as in the worker image: xich.migrate finds migrations/ beside service/. --no-deps: the package's
# torch requirements stay out; `pip check` would name them, so it runs in the build stage, before this.
RUN pip install --no-deps --no-index --no-build-isolation -e . \
    && rm -rf /opt/xich/build
USER 10001:10001
RUN mkdir -p "$PREFECT_HOME" "$XICH_CACHE_DIR"
EXPOSE 8000
CMD ["xich", "serve-hooks", "--host", "0.0.0.0", "--port", "8000"]
