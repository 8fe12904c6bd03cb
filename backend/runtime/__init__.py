"""Per-process runtime: the composition root (build.py) and what it builds: the project models and their
cache, the Label Studio connections, training schedulers (threads or RQ), background pre-annotation, the
RQ worker."""
