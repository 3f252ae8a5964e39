# Hush: operator, admission webhooks, accountant and noise sidecar in one image.
#   docker run IMAGE operator --all-namespaces      (the default command)
#   docker run IMAGE sidecar                        (what the injector runs: `hush sidecar`)
# Non-root (UID/GID 65532, as the chart's and the injector's runAsUser), read-only root
# filesystem friendly (every module is compiled at build time; nothing is written at run
# time), no pip, no compiler and no build files in the final stage.
#
# The install steps live in hack/image-install.sh, which tests/image/test_image_install.py
# runs in a fresh venv outside the repository: what is tested is what ships.

# The base, pinned by digest (a multi-platform index; the tag is for readers, the digest is
# what Docker resolves). Where it comes from and how to move it: docs/image.md
# (`make image-pin` resolves the current digest of a tag with crane).
ARG PYTHON_IMAGE=python:3.11.16-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# The toolchain and the dependencies first: they change only with the lock files, so this
# layer survives edits to the code.
COPY hack/image-install.sh hack/image-build-requirements.txt hack/image-requirements.txt hack/
RUN --mount=type=cache,target=/root/.cache/pip \
    hack/image-install.sh toolchain /opt/toolchain \
 && hack/image-install.sh dependencies /opt/toolchain /opt/hush
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN --mount=type=cache,target=/root/.cache/pip \
    hack/image-install.sh hush /opt/toolchain /src /opt/hush

FROM ${PYTHON_IMAGE}
# A passwd entry for UID 65532: kopf names its identity with getpass.getuser(), which fails
# for a UID without one unless $POD_ID or $USER is set. No home directory: nothing may be
# written there on a read-only root filesystem.
# And the standard library's bytecode: the official python images delete every .pyc, so
# without this each process start would compile the stdlib modules it imports again, in
# memory (nothing can be written).
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --no-log-init --uid 65532 --gid 65532 --home-dir /nonexistent \
      --no-create-home --shell /usr/sbin/nologin nonroot \
 && python -m compileall -q -j 0 --invalidation-mode unchecked-hash /usr/local/lib/python3.11
# The venv only: the toolchain, the wheel and the sources stay in the build stage. Its
# interpreter is the base image's /usr/local/bin/python3.11, the same in both stages.
COPY --from=build /opt/hush /opt/hush
ENV PATH=/opt/hush/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
# Last, so that a new revision does not invalidate the cached layers above.
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hush" \
      org.opencontainers.image.description="Differential privacy and immutable delivery as a property of the Kubernetes cluster" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENTRYPOINT ["hush"]
CMD ["operator", "--all-namespaces"]
