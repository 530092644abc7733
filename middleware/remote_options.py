"""Load-time checks of a remote backend's arguments: what would otherwise load cleanly and then fail
every request (a model string no provider serves, a timeout that is not a number, fallbacks given as a
string) is a ``ValueError`` or ``TypeError`` when the backend is built, which a config names by file
and field."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import litellm

__all__ = ["check_backend_options", "check_extra_options", "unknown_provider"]

OWN_OPTIONS = ("max_retries", "timeout", "fallbacks", "backoff_initial", "backoff_max", "max_concurrency", "client")


def _number(name: str, value: Any, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive seconds, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")


def _whole(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < least:
        raise ValueError(f"{name} must be {least} or more, got {value!r}")


def check_backend_options(
    model: Any, *, max_retries: Any, timeout: Any, fallbacks: Any, backoff_initial: Any, backoff_max: Any,
    max_concurrency: Any,
) -> None:
    """``LiteLLMBackend``'s own arguments, each of its type and range."""
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be a litellm model string such as 'openai/gpt-4o-mini', got {model!r}")
    _whole("max_retries", max_retries, 0)
    _number("timeout", timeout, positive=True)
    _number("backoff_initial", backoff_initial)
    _number("backoff_max", backoff_max)
    _whole("max_concurrency", max_concurrency, 1)
    if fallbacks is not None and (isinstance(fallbacks, (str, bytes, dict)) or not hasattr(fallbacks, "__iter__")):
        raise ValueError(f"fallbacks must be a list of model strings or dicts with a 'model' key, got {fallbacks!r}")


def check_extra_options(options: dict[str, Any]) -> None:
    """Options the backend passes on to the provider are allowed whatever their name (a provider may take
    ``top_k``, say), except a near miss of the backend's own option names that litellm does not know
    either (``time_out``, ``max_retry``, ``backoff_base``): sent upstream, it would be ignored or refused
    on every request, so it is refused here with the name it resembles."""
    known = set(inspect.signature(litellm.completion).parameters)
    for key in options:
        if key in known:
            continue
        close = difflib.get_close_matches(key, OWN_OPTIONS, n=1, cutoff=0.75)
        if close:
            raise ValueError(f"unknown option {key!r}; did you mean {close[0]!r}? (options: {', '.join(OWN_OPTIONS)}; "
                             "others go to the provider as they are)")


def unknown_provider(model: str, options: dict[str, Any]) -> str | None:
    """Why litellm could not route ``model`` (with ``options``' ``custom_llm_provider``/``api_base``), or
    ``None`` when it can: a model string such as ``nosuch/m`` or a bare name litellm does not know would
    fail every request with the same error, so it is refused when the backend is built."""
    prefix, slash, _ = model.partition("/")
    if slash and any(item.get("provider") == prefix for item in litellm.custom_provider_map):
        return None  # a custom provider: litellm registers it at the first call
    quiet = litellm.suppress_debug_info
    litellm.suppress_debug_info = True  # litellm prints a provider-list banner before raising
    try:
        litellm.get_llm_provider(model, custom_llm_provider=options.get("custom_llm_provider"),
                                 api_base=options.get("api_base"))
    except litellm.exceptions.BadRequestError:
        where = f"the provider '{prefix}'" if slash else "a bare model name without its provider"
        return (f"model {model!r}: litellm does not know {where}; write it as 'provider/name' (such as "
                "'openai/gpt-4o-mini' or 'hosted_vllm/NAME'; list: https://docs.litellm.ai/docs/providers), or set "
                "custom_llm_provider")
    except Exception:  # noqa: BLE001 - any other trouble is the request's to report, as before
        return None
    finally:
        litellm.suppress_debug_info = quiet
    return None
