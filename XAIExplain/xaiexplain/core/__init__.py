"""The engine's core: volumes and their geometry, models, preprocessing, targets, the prepared case,
baselines, and ``explain()`` itself."""
