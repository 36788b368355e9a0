# One image for every Chute process: `chute api`, `chute worker`, `chute serve`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY platform ./platform
RUN pip install --no-cache-dir .
COPY handlers ./handlers
COPY notifications ./notifications
ENV CHUTE_HANDLERS=/app/handlers CHUTE_TEMPLATES=/app/notifications/templates CHUTE_VAR_DIR=/data
VOLUME /data
EXPOSE 8000
CMD ["chute", "serve", "--host", "0.0.0.0", "--port", "8000"]
