# The operator image: a venv with the project and its pinned dependencies on a Python 3.11 base.
#
#   podman build -t asterisk-trunk-operator:0.1.0 --build-arg VERSION=0.1.0 .
#
# Both stages use BASE_IMAGE: the venv's interpreter is a symlink to the base's python, so the
# final stage must be the same image the venv was built on. Without a registry,
# testbed/build-operator-image.sh builds a local base with debootstrap and passes it here.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
# Only what the package is built from: changes to tests or docs keep this layer cached.
COPY pyproject.toml /src/
COPY operator/ /src/operator/
# Not editable: the venv must hold the package itself, not a path back into /src. pip and
# setuptools (from ensurepip) are removed afterwards: nothing uses them at run time.
# Behind a TLS-inspecting proxy, pass its CA bundle as the build secret `pip-ca`
# (`--secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt`): used here, never stored.
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && /opt/venv/bin/pip install /src \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
    && /opt/venv/bin/python -c "import kopf, trunk_operator.handlers"

FROM ${BASE_IMAGE}
ARG VERSION=unknown
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="asterisk-trunk-operator" \
      org.opencontainers.image.description="Kubernetes operator that delivers Twilio Elastic SIP trunks into Asterisk pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}"
COPY --from=builder /opt/venv /opt/venv
# Read-only root filesystem: pip compiled the bytecode at build time, nothing is written later.
# USER and HOME: the uid has no passwd entry, and Kopf names itself after the user
# (getpass.getuser() fails on an unknown uid unless USER is set).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    USER=trunk-operator \
    HOME=/tmp
# The conventional "nonroot" ids (distroless): no passwd entry needed, matches the chart's
# runAsUser/runAsGroup so `runAsNonRoot: true` can verify it.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["trunk-operator"]
CMD ["run", "--liveness=http://0.0.0.0:8080/healthz"]
