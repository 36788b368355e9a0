# One image for every Chute process: `chute api`, `chute worker`, `chute serve`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY platform ./platform
RUN pip install --no-cache-dir .
COPY handlers ./handlers
COPY notifications ./notifications
# Chute runs as `chute` (no root, no shell), which owns /data and nothing else: the code, the handlers
# and the templates stay root's, read-only to the process that runs uploads through them. A named volume
# mounted on /data starts with this ownership; a volume a root-run Chute made needs `chown -R 10001 /data`.
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin chute \
    && mkdir -p /data && chown chute:chute /data && chmod 0750 /data
ENV CHUTE_HANDLERS=/app/handlers CHUTE_TEMPLATES=/app/notifications/templates CHUTE_VAR_DIR=/data
# The API listens on 0.0.0.0 in the container, so it starts only with keys: pass CHUTE_API_KEYS (clients send
# `Authorization: Bearer KEY`). CHUTE_ALLOW_OPEN=1 instead starts it with no keys, open to anyone who can reach
# the published port: uploads, every job and every stored file. Off here; turn it on only on purpose.
ENV CHUTE_ALLOW_OPEN=0
USER chute
VOLUME /data
EXPOSE 8000
CMD ["chute", "serve", "--host", "0.0.0.0", "--port", "8000"]
