# inference-gateway as a container: `docker build -t inference-gateway .`
#
# Runs `inference-gateway serve` on 0.0.0.0:8080 as an unprivileged user. The config is a file
# mounted at /etc/gateway/gateway.yaml ($GATEWAY_CONFIG); secrets (WANDB_API_KEY, ...) come only
# from the environment, through the config's ${VAR} substitution. Nothing secret is in the image.
#
#   docker run --rm -p 8080:8080 -v "$PWD/config:/etc/gateway:ro" \
#     -e WANDB_API_KEY -e WANDB_PROJECT inference-gateway
#
# The same image runs the other subcommands: `docker run --rm inference-gateway keys new`,
# `... check-config`, `... fake-upstream --host 0.0.0.0 --port 9090`.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv with the pinned dependencies, then the package --------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, so that editing the code does not reinstall them: the runtime
# dependencies named in pyproject.toml, at the versions constraints.txt pins (what CI tests).
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install -c constraints.txt -r requirements.txt

# Then the package itself, without touching the dependencies installed above.
COPY README.md ./
COPY gateway ./gateway
RUN pip install --no-deps . \
 && inference-gateway --help > /dev/null

# ---- runtime: the virtualenv on a clean slim image, no build leftovers ----------------------
FROM ${PYTHON_IMAGE} AS runtime

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway \
 && mkdir -p /etc/gateway

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml

USER 10001:10001
EXPOSE 8080

# Liveness of the process (the slim image has no curl). /readyz, which also checks the limiter
# backend, is for load balancers and Kubernetes' readiness probe.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["inference-gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
