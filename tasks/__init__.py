"""The pipeline layer: `tasks.stages` (one module per stage) over `tasks.services` (what they share)."""
