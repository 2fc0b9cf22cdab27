"""What the stages share: the DAG and catalog, I/O, tracking (MLflow), the registry, versions
(DVC), studies (Optuna storages), data validation (Great Expectations), the project lock, the
stage runner and its Prefect tasks. Services never import a stage (`tasks.stages`).
"""
