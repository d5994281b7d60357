# syntax=docker/dockerfile:1
#
# One image for every orbilnot process, selected by the arguments:
#   docker run IMAGE serve billing --host 0.0.0.0      (or order, notification, gateway)
#   docker run IMAGE migrate                           (bring the database up to date)
#   docker run IMAGE migrate --wait                    (block until it is up to date)
# Build from the repository root:  docker build -t orbilnot .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# build: a virtualenv holding exactly the locked dependencies plus the package.
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/orbilnot
ENV PATH=/opt/orbilnot/bin:$PATH
WORKDIR /build

# Dependencies first, from the lock alone, so this layer is rebuilt only when the lock changes.
# A lock made by freezing a development environment may list the project itself (as
# "-e <path>" or "orbilnot==..."); that line is dropped here, the package is installed below.
COPY requirements.lock ./
RUN grep -viE '^[[:space:]]*(-e[[:space:]]|orbilnot[[:space:]]*(==|@|$))' requirements.lock > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# The package itself, without resolving anything: everything it needs came from the lock.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps .

# ---------------------------------------------------------------------------------------------
# runtime: the slim base, the virtualenv, an unprivileged user. No compilers, no build files.
FROM ${PYTHON_IMAGE} AS runtime

# Fixed numeric ids: Kubernetes' runAsNonRoot can only verify a numeric USER, and the Helm
# chart sets the same ids in its securityContext.
RUN groupadd --system --gid 10001 orbilnot \
 && useradd --system --uid 10001 --gid orbilnot --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin orbilnot

COPY --from=build /opt/orbilnot /opt/orbilnot

# The root filesystem may be read-only (it is in the Helm chart); /tmp is the one writable
# place, so anything that wants a home directory gets it there.
ENV PATH=/opt/orbilnot/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp

WORKDIR /tmp
USER 10001:10001

# gateway, billing, order, notification (their default ports; pass --port to change).
EXPOSE 8080 8081 8082 8083

ENTRYPOINT ["orbilnot"]
# Containers bind all interfaces; compose and the chart always pass an explicit command.
CMD ["serve", "gateway", "--host", "0.0.0.0"]
