#!/bin/sh
# Start `mlflow server` with the basic-auth app. Its settings file is written here, from the
# environment (docker/.env), so that no credential is in the image: MLflow creates the admin
# user from MLFLOW_AUTH_ADMIN_PASSWORD on the first start against an empty user store.
set -eu
: "${MLFLOW_AUTH_ADMIN_USERNAME:?set it in docker/.env}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set it in docker/.env}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set it in docker/.env}"  # signs the auth app's CSRF tokens
: "${MLFLOW_BACKEND_STORE_URI:?}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?}"
AUTH_DIR="${MLFLOW_AUTH_DIR:-/var/lib/mlflow-auth}"  # the user store: a volume in compose
export MLFLOW_AUTH_CONFIG_PATH="$AUTH_DIR/basic_auth.ini"
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///${AUTH_DIR}/basic_auth.db
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
exec mlflow server --app-name basic-auth \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --serve-artifacts \
    --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" \
    --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow:5000,localhost:5000,127.0.0.1:5000}" "$@"
