# Hush: operator, webhooks and sidecar in one image. Non-root, read-only root filesystem.
# The base is pinned to an exact Python patch release and Debian suite; the release
# pipeline additionally pins it by digest (see docs/operating.md) so rebuilds are exact.
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m pip install --no-cache-dir --upgrade pip==25.3 \
 && python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.7-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index --find-links /wheels hush \
 && rm -rf /wheels
USER 65532:65532
ENTRYPOINT ["hush"]
CMD ["operator", "--all-namespaces"]
