"""Why a job did not produce a reply; the server maps these to HTTP statuses."""


class WorkerError(Exception):
    """Base class: a job that ended without a complete reply."""


class QueueFull(WorkerError):
    """No room in the queue (or in this owner's share of it)."""

    def __init__(self, message: str, per_owner: bool = False) -> None:
        super().__init__(message)
        self.per_owner = per_owner


class ShuttingDown(WorkerError):
    """The pool is stopping and takes no more work."""


class OwnerBlocked(WorkerError):
    """This owner's jobs are refused until unblocked (their account was disabled)."""


class JobCancelled(WorkerError):
    """The waiting client went away or stopped the job."""


class UpstreamError(WorkerError):
    """The model server failed: unreachable, erroring, or malformed."""


class UpstreamTimeout(UpstreamError):
    """The model server did not answer in time."""


class UpstreamRejected(UpstreamError):
    """The model server refused the request itself (a 4xx); `status` is its answer."""

    def __init__(self, message: str, status: int, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail  # the model server's own words


class ModelNotFound(WorkerError):
    """No configured model has the name the request gave."""


class ModelUnavailable(WorkerError):
    """Every replica of the model is down or cooling down: failing fast beats a timeout."""
