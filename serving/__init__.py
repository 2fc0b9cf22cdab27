"""Model serving: an HTTP server of one registered ONNX model, following its alias without restarts.

A layer of its own, beside tasks/ and flows/ and above the core: FastAPI and uvicorn around the
core's ONNX model (`shrinkflow.deployable` says its inputs, outputs and metadata). It imports the
core only; tasks/ plugs the MLflow registry in, flows/cli.py (`shrinkflow serve`) runs it.

Modules, each importing only modules listed before it:
  model     `ServedModel` (one version and its ONNX Runtime session) and the `ModelSource` protocol
  payload   request bodies (the `mlflow models serve` formats) to float32 rows, or a `BadRequest`
  batching  `MicroBatcher`: concurrent requests share one ONNX Runtime call
  reload    `LiveModel`: the served version, swapped when the source's alias moves
  app       `create_app`: the FastAPI routes over all of the above

Nothing here imports mlflow, prefect or torch: a registry is plugged in as a `ModelSource`. This
__init__ imports nothing, so reading a model file (`model`) does not load the web stack.
"""
