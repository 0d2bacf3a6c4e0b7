-- First start of the compose PostgreSQL (infra/docker-compose.yml): one database per service, the names
-- `steelqc server start` uses with STEELQC_DATABASE_URL (infra/services.py): MLflow and Optuna both keep an
-- alembic_version table, so no two services share a database.
CREATE DATABASE steelqc_prefect;
CREATE DATABASE steelqc_mlflow;
CREATE DATABASE steelqc_mlflow_auth;
CREATE DATABASE steelqc_optuna;
