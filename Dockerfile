# dispatcher: the daemon (scheduler + webhooks/API + sender) in a container.
# Build: docker build -t dispatcher .   Run with PostgreSQL: docker compose up (compose.yaml)
# See docs/operations.md for the environment, volumes and upgrades.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dispatcher ./dispatcher
RUN python -m venv /opt/dispatcher \
 && /opt/dispatcher/bin/pip install --no-cache-dir .

FROM python:3.11-slim
# the repository's layout under /srv/dispatcher: the shipped config/dispatcher.toml finds
# its templates at ../templates (relative paths are relative to the config file's folder);
# mount your own config/ and templates/ over these two folders
WORKDIR /srv/dispatcher
RUN useradd --system --uid 10001 --home-dir /srv/dispatcher --shell /usr/sbin/nologin dispatcher \
 && mkdir -p /srv/dispatcher/var \
 && chown dispatcher /srv/dispatcher/var
COPY --from=build /opt/dispatcher /opt/dispatcher
COPY config ./config
COPY templates ./templates
ENV PATH=/opt/dispatcher/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DISPATCHER_CONFIG=/srv/dispatcher/config/dispatcher.toml
USER 10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["dispatcher"]
CMD ["run", "--host", "0.0.0.0", "--port", "8080"]
