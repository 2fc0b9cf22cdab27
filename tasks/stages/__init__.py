"""The pipeline's stages, one module each, declared in `tasks.services.dag`.

Each module holds one stage function: it reads its inputs through the catalog, computes with the
core (`shrinkflow`) and records with the services (`tasks.services`). A stage never imports
another stage: it reads another stage's outputs from disk, as DVC and the cache keys see them.
"""
