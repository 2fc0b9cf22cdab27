-- one server, one database per store: MLflow's runs and registry, the Optuna studies, Prefect's
-- flow runs
CREATE DATABASE mlflow;
CREATE DATABASE optuna;
CREATE DATABASE prefect;
