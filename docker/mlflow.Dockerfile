# The MLflow tracking server of docker/compose.yaml: PostgreSQL backend store, artifacts in MinIO
# (S3) served through the server, and MLflow's basic-auth app. Build from the repository root:
#   docker build -f docker/mlflow.Dockerfile -t clip-ablations-mlflow .
FROM python:3.11.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    PYTHONUNBUFFERED=1
RUN python -m pip install "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.13" "boto3==1.44.8" \
    && useradd --create-home --uid 1000 mlflow \
    && mkdir -p /var/lib/mlflow-auth && chown mlflow /var/lib/mlflow-auth
COPY --chmod=755 docker/mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint.sh

USER 1000
WORKDIR /home/mlflow
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/mlflow-entrypoint.sh"]
