# One image for both roles of a round, as the course runs it:
#   docker run lottery:0.1.0 server --agencies 5
#   docker run lottery:0.1.0 agency --id 1 --server server:12345 --bets /data/agency.csv
# docker-compose files for N agencies: ./generar-compose.sh docker-compose-dev.yaml N
#
# Two stages: the first installs lottery and its extras into a virtualenv; the
# second copies only that virtualenv, so the image has no source tree, build
# directory, pip cache or compiler.

FROM python:3.11.14-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/lottery

WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest of the
# checkout out of the build context).
COPY pyproject.toml README.md ./
COPY lottery/ lottery/
RUN /opt/lottery/bin/pip install --no-cache-dir ".[metrics,ui,fast]"


FROM python:3.11.14-slim-bookworm

LABEL org.opencontainers.image.title="lottery" \
      org.opencontainers.image.description="tp0 lottery: the central server and the betting agencies" \
      org.opencontainers.image.licenses="MIT"

ENV PATH=/opt/lottery/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# An unprivileged user with a fixed uid, and the server's data directory
# (compose mounts a named volume there; a new volume takes this owner).
RUN groupadd --system --gid 10001 lottery \
 && useradd --system --uid 10001 --gid lottery --no-create-home \
        --home-dir /var/lib/lottery --shell /usr/sbin/nologin lottery \
 && mkdir -p /var/lib/lottery \
 && chown lottery:lottery /var/lib/lottery

COPY --from=build /opt/lottery /opt/lottery

WORKDIR /var/lib/lottery
USER 10001:10001

EXPOSE 12345

# No HEALTHCHECK here: the image also runs agencies, which serve nothing.
# The compose file gives the server one (`lottery ping 127.0.0.1:12345`).
ENTRYPOINT ["lottery"]
CMD ["--help"]
