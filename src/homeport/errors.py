"""homeport's exceptions: one base class, each subclass carrying the HTTP status it maps to.

    HomeportError                     500  base: something went wrong
    ├── ConfigError                   500  a setting, config file or policy file is broken
    ├── BadRequestError               400  the caller sent something we cannot use
    │   ├── InvalidModelNameError     400  "invalid model name"
    │   ├── InvalidOptionError        400  an option or field has the wrong type or value
    │   ├── UnsupportedError          400  the model cannot do that (tools, embeddings, ...)
    │   ├── InvalidModelFileError     400  a GGUF or blob failed validation
    │   ├── ModelTooLargeError        400  the model does not fit in the memory left
    │   └── RegistryRefusedError      400  a registry sent or asked for something unsafe or wrong
    ├── UnauthorizedError             401  no or bad token
    ├── ForbiddenError                403  the policy or the Host/Origin check says no
    ├── NotFoundError                 404
    │   └── ModelNotFoundError        404  "model 'x' not found, try pulling it first"
    ├── PayloadTooLargeError          413
    ├── InsufficientStorageError      507  the disk has no room for a model or blob
    ├── RateLimitedError              429  a per-identity limit; carries retry_after
    ├── ClientClosedError             499  the client went away
    ├── StorageError                  500  reading or writing the model store failed
    ├── RegistryError                 502  a registry could not be reached or failed (worth a retry)
    └── ServerBusyError               503  the queue is full; carries retry_after

Permanent failures are 4xx on purpose: CodeCompanion's curl retries 408, 429 and 5xx three times,
so a 5xx for a bad request would run the same generation again. Messages say what to do next and
never contain a filesystem path.
"""

from __future__ import annotations


class HomeportError(Exception):
    """Base class; ``status`` is the HTTP status the API answers with."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(HomeportError):
    status = 500


class BadRequestError(HomeportError):
    status = 400


class InvalidModelNameError(BadRequestError):
    def __init__(self, message: str = "invalid model name") -> None:
        super().__init__(message)


class InvalidOptionError(BadRequestError):
    pass


class UnsupportedError(BadRequestError):
    pass


class InvalidModelFileError(BadRequestError):
    pass


class ModelTooLargeError(BadRequestError):
    pass


class RegistryRefusedError(BadRequestError):
    """A registry broke the rules (bad digest, lying size, unsafe redirect or realm): permanent."""


class UnauthorizedError(HomeportError):
    status = 401


class ForbiddenError(HomeportError):
    status = 403


class NotFoundError(HomeportError):
    status = 404


class ModelNotFoundError(NotFoundError):
    def __init__(self, name: str, hint: str = ", try pulling it first") -> None:
        super().__init__(f"model '{name}' not found{hint}")
        self.name = name


class PayloadTooLargeError(HomeportError):
    status = 413


class InsufficientStorageError(HomeportError):
    status = 507


class StorageError(HomeportError):
    """An OSError in the store, told without the path (``strerror`` only)."""

    status = 500

    @classmethod
    def wrap(cls, action: str, exc: OSError) -> StorageError:
        return cls(f"could not {action}: {exc.strerror or type(exc).__name__}")


class RateLimitedError(HomeportError):
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClientClosedError(HomeportError):
    status = 499

    def __init__(self, message: str = "client disconnected") -> None:
        super().__init__(message)


class RegistryError(HomeportError):
    status = 502


class ServerBusyError(HomeportError):
    status = 503

    def __init__(
        self,
        message: str = "server busy, please try again.  maximum pending requests exceeded",
        retry_after: int = 1,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
