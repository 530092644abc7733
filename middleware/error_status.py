"""What a failure of the pipeline answers over HTTP: the status, OpenAI's ``error`` object and the retry headers.

``alignware serve`` (JSON and streams) and the LiteLLM provider share it, so a client sees the same status for
the same failure whichever way it reached the pipeline. No web framework is imported here.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .errors import AlignwareError, BackendError, InputError

log = logging.getLogger("alignware")

#: Upstream statuses about the server's own set-up (its provider key, its model name), not the client's request.
_UPSTREAM_CONFIG_ERRORS = {401: "authentication failed", 403: "permission denied", 404: "model or route not found"}


def error_object(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object: ``{"message", "type", "param", "code"}``."""
    return {"message": message, "type": kind, "param": param, "code": code}


def error_for(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the OpenAI ``error`` object for an exception; both paths (JSON and stream) use it.

    ``InputError`` → 400 ``invalid_request_error`` (``param``: its ``field``);
    ``BackendError`` → ``upstream_error`` with a status that tells the client whose problem it is: 429 for
    the upstream's rate limit, 504 for its timeouts, 502 for its 5xx and for everything it said about our
    own credentials or model name (401, 403, 404: the client's request was fine, and the message names
    neither the provider's key nor the upstream model), the upstream's own status for its other 4xx (a
    context too long, say: the client's request); anything else (``StageError``, other
    ``AlignwareError``s, any exception) → 500 ``server_error``, with the traceback logged on the
    ``alignware`` logger.
    """
    if isinstance(exc, InputError):
        return 400, error_object(str(exc), "invalid_request_error", exc.field)
    if isinstance(exc, BackendError):
        code = exc.status_code
        message = str(exc)
        if code in _UPSTREAM_CONFIG_ERRORS:
            status = 502
            message = (f"the upstream model refused the server's request ({_UPSTREAM_CONFIG_ERRORS[code]}); "
                       "the server's operator can find the details in its log")
        elif code == 408:
            status = 504
        elif code == 429 or (code is not None and 400 <= code < 500):
            status = code
        else:
            status = 502
        log.warning("upstream error (answered %d): %s", status, exc)
        return status, error_object(message, "upstream_error")
    log.error("chat completion failed", exc_info=exc)
    message = str(exc) if isinstance(exc, AlignwareError) else f"internal error: {type(exc).__name__}: {exc}"
    return 500, error_object(message, "server_error")


def retry_headers(exc: BaseException, status: int) -> dict[str, str]:
    """What an upstream failure tells the client about retrying. A 429 passes the upstream's ``Retry-After``
    on. ``X-Should-Retry: false`` (read by the ``openai`` SDKs, which otherwise retry 408, 409, 429 and 5xx
    twice on their own) where another try cannot help or has been made already: the backend retried per
    its policy, or the failure is not one a retry mends (the upstream refusing the server's key, a bad
    request). Without that, each client retry would start the backend's retries again: 3 x 3 upstream
    calls for one request with the SDK's and the backend's default of 2 retries each."""
    if not isinstance(exc, BackendError):
        return {}
    headers: dict[str, str] = {}
    if status == 429 and exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))  # the upstream's wait, passed on
    if not exc.retryable or exc.attempts > 1:
        headers["X-Should-Retry"] = "false"
    return headers
