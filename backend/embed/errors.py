"""The one error of task data: an item that cannot be fetched or decoded (a per-task skip, never a failed batch)."""


class FetchError(Exception):
    """An item could not be fetched or decoded; str(error) is the reason shown in logs."""


class BadItems(Exception):
    """Some items of a batch cannot be encoded (position in the batch -> reason); the others can, without them."""

    def __init__(self, reasons: dict[int, str]):
        super().__init__(f"{len(reasons)} items cannot be encoded")
        self.reasons = reasons
