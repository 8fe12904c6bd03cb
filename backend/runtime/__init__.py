"""Per-process runtime: services built from the settings, training schedulers (threads or RQ), the worker."""
