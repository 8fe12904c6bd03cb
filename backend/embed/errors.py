"""The one error of task data: an item that cannot be fetched or decoded (a per-task skip, never a failed batch)."""


class FetchError(Exception):
    """An item could not be fetched or decoded; str(error) is the reason shown in logs."""
