"""The one exception hierarchy of edge_eco.

::

    EdgeEcoError
    ├── ManifestError (ValueError)          malformed ecology.toml, bad field, out-of-range value
    │   └── IntegrityError                  missing file, sha256 mismatch, truncated model
    │       └── SignatureError              manifest signature missing, untrusted or not matching
    ├── RequestError (ValueError)           a request the runtime refuses (empty, too long, bad UTF-8)
    ├── NativeError                         the C kernel returned an error status
    ├── ResidencyError                      loading/eviction under the memory budget
    │   └── BudgetError                     a model cannot fit the budget at all
    ├── BackendError                        a model runtime failed
    │   ├── ModelLoadError                  the runtime refused a model file
    │   └── InferenceError                  a run failed (wrong shape, runtime error)
    ├── RoutingError                        no eligible model for a request
    ├── FallbackError                       the remote generalist failed (the runtime answers locally)
    │   ├── RemoteUnavailable               connection refused/reset, timeout, circuit open
    │   │   └── RemoteTLSError              TLS handshake or certificate check failed (not retried)
    │   └── RemoteProtocolError             malformed or wrong-shaped reply, label outside the label set
    │       └── RemoteStatusError           an HTTP error status (4xx/5xx); ``status`` holds it
    ├── StoreError                          outcome memory (SQLite) failures
    │   └── StoreCorruptError               the database file is damaged (move it aside)
    └── BuildError                          `edge-eco build` could not build a bundle
        ├── RecipeError (ValueError)        malformed recipe TOML, unknown or out-of-range field
        └── DataError (ValueError)          training data unusable (empty labels, leakage, ...)

Errors from onnxruntime, sqlite3 and the HTTP layer are translated where they are caught
(``raise ... from exc``), so callers only ever see these types.
"""


class EdgeEcoError(Exception):
    """Root of every error edge_eco raises."""


class ManifestError(EdgeEcoError, ValueError):
    """The ecology manifest or a config value is malformed or out of range."""


class IntegrityError(ManifestError):
    """A file listed in the manifest is missing, truncated or does not match its sha256."""


class SignatureError(IntegrityError):
    """A bundle's signature is missing, malformed, by an untrusted key, or does not verify."""


class RequestError(EdgeEcoError, ValueError):
    """A request the runtime refuses: empty text, text over the limit, invalid UTF-8."""


class NativeError(EdgeEcoError):
    """The compiled kernel returned a negative status."""


class ResidencyError(EdgeEcoError):
    """Loading or evicting a model under the memory budget failed."""


class BudgetError(ResidencyError):
    """A model cannot fit the memory budget even with everything else evicted."""


class BackendError(EdgeEcoError):
    """A model runtime failed."""


class ModelLoadError(BackendError):
    """The model runtime refused a model file (corrupt, truncated, unsupported)."""


class InferenceError(BackendError):
    """Running a model failed (wrong input shape or type, runtime error)."""


class RoutingError(EdgeEcoError):
    """No model is eligible for a request."""


class FallbackError(EdgeEcoError):
    """The remote generalist could not answer; the runtime answers locally instead."""


class RemoteUnavailable(FallbackError):
    """The remote server could not be reached in time (refused, reset, timeout, breaker open)."""


class RemoteTLSError(RemoteUnavailable):
    """TLS with the remote failed: its certificate did not verify or the handshake was refused.
    Another try would fail the same way, so it is never retried."""


class RemoteProtocolError(FallbackError):
    """The remote server answered, but with an error status or a malformed reply."""


class RemoteStatusError(RemoteProtocolError):
    """The remote server answered with an HTTP error status (kept in ``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class StoreError(EdgeEcoError):
    """The outcome store failed."""


class StoreCorruptError(StoreError):
    """The outcome database file is damaged (not a database, or ``PRAGMA quick_check`` failed)."""


class BuildError(EdgeEcoError):
    """``edge-eco build`` could not build a bundle (a missing build dependency, a failed step)."""


class RecipeError(BuildError, ValueError):
    """The build recipe is malformed: unknown field, wrong type, value out of range."""


class DataError(BuildError, ValueError):
    """The training data cannot be used as given; found before any training starts."""


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters (a peer's
    400-digit integer or megabyte string is named, not copied into logs and provenance)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's str conversion limit (4,300 digits)
        return f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
