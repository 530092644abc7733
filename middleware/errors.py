"""Exceptions raised by alignware."""

from __future__ import annotations


class AlignwareError(Exception):
    """Base class of every error alignware raises on purpose."""


class InputError(AlignwareError, ValueError):
    """A request, a data file or a configuration is malformed.

    The message names what was wrong and where (file, line, field). ``field``, where set, is the
    request field at fault in OpenAI's notation (``temperature``, ``messages[0].role``).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BackendError(AlignwareError):
    """An LLM backend failed; carries the provider's message.

    Attributes:
        provider_message: the text the provider (or the local model) returned.
        status_code: the HTTP status where there was one.
        retryable: whether retrying the call could have helped.
        retry_after: the seconds the provider asked to wait (its ``Retry-After``), where it asked.
    """

    def __init__(
        self,
        message: str,
        *,
        provider_message: str | None = None,
        status_code: int | None = None,
        retryable: bool = False,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider_message = provider_message if provider_message is not None else message
        self.status_code = status_code
        self.retryable = retryable
        self.attempts = attempts
        self.retry_after = retry_after


class StageError(AlignwareError):
    """A stage configured with ``on_error="raise"`` failed."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"stage {stage!r} failed: {reason}")
        self.stage = stage
        self.reason = reason


class CheckpointError(AlignwareError):
    """A checkpoint folder is missing, half-written or corrupt."""
