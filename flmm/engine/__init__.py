"""Training and evaluation engine: Lightning modules, data modules and metrics."""
