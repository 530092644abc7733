"""``RemoteGenerator``: a trained rewriter or corrector served by an inference engine, continuing rendered
template text through the engine's text-completion API.

vLLM (and SGLang, TGI, llama.cpp's server...) serve many LoRA adapters on one base model
(``vllm serve BASE --enable-lora --lora-modules rewriter=runs/rewriter corrector=runs/corrector``), each
under its own model name. A stage in *remote* mode sends its rendered template, exactly as the local
mode would hand it to its model, to ``/v1/completions`` through litellm's ``text_completion``
(``model="hosted_vllm/rewriter"``): no chat template is applied; the engine tokenizes the text as the
local mode does (with the tokenizer's BOS token) and stops at the model's EOS token. Decoding is the
local mode's: ``temperature`` (0 is greedy), ``top_p``, ``max_new_tokens`` as ``max_tokens``, ``seed``.

Sending, retries, timeouts and errors are ``middleware.remote.LiteLLMBackend``'s: only failures that
retrying can fix (timeouts, connection errors, 5xx, 429) are retried, and every failure ends in one
``BackendError`` naming the model, the HTTP status and the engine's message, which the stage's failure
policy turns into a pass-through with that reason in its trace. A completion that comes back (even an
empty one) goes through the stage's safeguards as a local generation does.

This module imports litellm when it is imported: ``rewriters.stage`` imports it on first use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import litellm

from middleware.adapters import MANIFEST, read_manifest
from middleware.decoding import check_sampling
from middleware.errors import BackendError, InputError
from middleware.remote import LiteLLMBackend
from middleware.threads import submit
from middleware.types import ChatRequest, Message

from .generator import KINDS, Generation, checkpoint_template, decoding_params
from .templates import Template, get_template

__all__ = ["RemoteGenerator", "TEXT_COMPLETION_PROVIDERS"]

#: litellm providers whose ``text_completion`` goes to a native ``/v1/completions`` endpoint; for any
#: other, litellm would send the text as a chat message, wrapped in the served model's chat template.
TEXT_COMPLETION_PROVIDERS = frozenset(litellm.openai_text_completion_compatible_providers) | {"text-completion-openai", "openai"}

#: ``count_tokens`` without the served tokenizer: UTF-8 bytes per token, on the low side (English BPE
#: averages about 4), so that a token limit derived from it errs on the generous side.
BYTES_PER_TOKEN = 3


class _TextCompletions(LiteLLMBackend):
    """``LiteLLMBackend``'s retry, timeout and error policy around litellm's ``text_completion``."""

    def text(self, prompt: str, max_new: int, temperature: float, top_p: float, seed: int | None) -> Any:
        """One completion of ``prompt`` (the raw ``TextCompletionResponse``); ``BackendError`` on failure."""
        request = ChatRequest(
            messages=[Message(role="user", content=prompt)],
            temperature=temperature,
            top_p=top_p if top_p < 1 else None,
            max_tokens=max_new,
            seed=seed,
        )

        def call(target: Any) -> Any:
            kwargs = self._kwargs(target, request)
            del kwargs["messages"]
            return litellm.text_completion(prompt=prompt, **kwargs)

        raw, _ = self._run(call)
        return raw


def _provider(model: str) -> str:
    try:
        return str(litellm.get_llm_provider(model=model)[1])
    except Exception as e:  # litellm raises its BadRequestError for a model string it cannot route
        raise InputError(f"remote model {model!r}: litellm cannot route it ({type(e).__name__}); use e.g. 'hosted_vllm/rewriter'") from None


class RemoteGenerator:
    """A rewriter or corrector adapter on an inference engine, mapping rendered template text to a
    continuation; a ``StageGenerator`` like ``TextGenerator``, whose role it takes in remote mode.

    Build one with the constructor (``template`` given) or ``from_folder`` (the template and decoding
    defaults read from a local copy of the adapter folder's manifest).

    Args:
        model: the litellm model string of the served adapter, ``"hosted_vllm/NAME"`` where NAME is its
            ``--lora-modules`` name (any provider whose text completions litellm sends to a native
            ``/v1/completions``: ``hosted_vllm``, ``text-completion-openai``, ``openai`` with ``api_base``...).
        template: the template the adapter was trained with (name or ``Template``).
        kind: ``"rewriter"`` or ``"corrector"`` (what the manifest says; optional).
        api_base: the engine's OpenAI-compatible URL, e.g. ``http://localhost:8000/v1`` (default: litellm's
            ``HOSTED_VLLM_API_BASE``).
        api_key: the engine's key (``vllm serve --api-key``), if it has one.
        timeout, max_retries: per attempt, and retries of retryable failures (``LiteLLMBackend``'s).
        max_concurrency: how many texts of one ``generate_ex`` call are in flight at once (the engine
            batches concurrent requests itself).
        manifest, path: the adapter's manifest and local folder, when read from one.
        **litellm_kwargs: passed to every ``text_completion`` call (``extra_headers``...).

    Attributes:
        template, manifest, kind, path, model: as for ``TextGenerator`` (``model`` is the model string).
    """

    #: runs on an engine, not in this process: the stage's mode is ``"remote"``.
    served = True

    def __init__(
        self,
        model: str,
        *,
        template: "Template | str",
        kind: str | None = None,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        max_concurrency: int = 8,
        manifest: dict[str, Any] | None = None,
        path: Path | None = None,
        **litellm_kwargs: Any,
    ) -> None:
        if not isinstance(model, str) or "/" not in model:
            raise InputError(f"remote model must be a litellm model string such as 'hosted_vllm/rewriter', got {model!r}")
        provider = _provider(model)
        if provider not in TEXT_COMPLETION_PROVIDERS:
            raise InputError(
                f"remote model {model!r}: litellm sends {provider!r} text completions as chat messages, which would wrap "
                "the template in a chat template; serve the adapter on an OpenAI-compatible engine and use "
                "'hosted_vllm/NAME' (or 'text-completion-openai/NAME')"
            )
        if kind is not None and kind not in KINDS:
            raise InputError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        self.template = get_template(template)
        self.model = model
        self.path = path
        m = dict(manifest or {})
        m["kind"] = kind or m.get("kind")
        m["template"] = self.template.name
        m.setdefault("generation", dict(self.template.generation))
        m["served_as"] = model
        self.manifest = m
        self.threads = max_concurrency  # the pool of generate_ex's concurrent requests (middleware.threads)
        sent: dict[str, Any] = {k: v for k, v in (("api_base", api_base), ("api_key", api_key)) if v is not None}
        try:
            self._client = _TextCompletions(
                model, timeout=timeout, max_retries=max_retries, max_concurrency=max_concurrency, **sent, **litellm_kwargs
            )
        except (TypeError, ValueError) as e:
            raise InputError(f"remote model {model!r}: {e}") from None

    @classmethod
    def from_folder(
        cls,
        path: "str | os.PathLike[str]",
        model: str,
        *,
        template: "Template | str | None" = None,
        kind: str | None = None,
        **options: Any,
    ) -> "RemoteGenerator":
        """The adapter served as ``model``, with the template and decoding defaults of its local folder
        ``path`` (the one given to the engine's ``--lora-modules``, or a copy of it): its manifest's,
        unless ``template`` says otherwise; a folder without manifest takes the ``kind``'s published
        template, as in local mode. The weights are not read. ``options``: the constructor's."""
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder (expected the adapter folder the engine serves)")
        folder = folder.resolve()
        manifest = read_manifest(folder)
        if manifest is None and not any((folder / f).is_file() for f in ("adapter_config.json", "config.json")):
            raise InputError(f"{folder}: neither an adapter folder ({MANIFEST} / adapter_config.json) nor a model folder (config.json)")
        manifest = dict(manifest or {})
        if manifest.get("kind") and kind and manifest["kind"] != kind:
            raise InputError(f"{folder} holds a {manifest['kind']} model, not a {kind}")
        tmpl = checkpoint_template(folder, manifest, template, kind or manifest.get("kind"))
        return cls(model, template=tmpl, kind=manifest.get("kind") or kind, manifest=manifest, path=folder, **options)

    def __repr__(self) -> str:
        return f"RemoteGenerator(model={self.model!r}, kind={self.kind!r}, template={self.template.name!r})"

    @property
    def kind(self) -> str | None:
        return self.manifest.get("kind")

    def render(self, **values: str) -> str:
        """``self.template.render(**values)``."""
        return self.template.render(**values)

    def count_tokens(self, text: str) -> int:
        """An estimate of the tokens of ``text`` (the served tokenizer is not here): UTF-8 bytes / 3."""
        return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)

    # -- generation ------------------------------------------------------------------------------
    def generate_ex(
        self,
        texts: str | Sequence[str],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int = 8,
    ) -> list[Generation]:
        """Continue each text on the engine; return text, finish reason and token counts for each.

        ``None`` parameters take the checkpoint's defaults, as in ``TextGenerator.generate_ex``. The
        texts go as concurrent requests (at most ``max_concurrency`` at once; ``batch_size`` is the local
        mode's and is not used: the engine batches them). The first failure raises ``BackendError``.
        """
        items: list[str] = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            return []
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise InputError(f"texts[{i}] must be a string, got {type(t).__name__}")
            if not t:
                raise InputError(f"texts[{i}] is empty: nothing to continue from")
        max_new, temp, tp = decoding_params(self.manifest, max_new_tokens, temperature, top_p)
        check_sampling(None, seed)
        if len(items) == 1:
            return [self._one(items[0], max_new, temp, tp, seed)]
        futures = [submit(self, self._one, t, max_new, temp, tp, seed) for t in items]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()

    def generate(self, texts: str | Sequence[str], **kwargs: Any) -> list[str]:
        """Continue each text; return the continuations (``generate_ex``'s arguments)."""
        return [g.text for g in self.generate_ex(texts, **kwargs)]

    def _one(self, text: str, max_new: int, temperature: float, top_p: float, seed: int | None) -> Generation:
        raw = self._client.text(text, max_new, temperature, top_p, seed)
        choices = getattr(raw, "choices", None) or []
        out = getattr(choices[0], "text", None) if choices else None
        if not isinstance(out, str):
            raise BackendError(f"{self.model}: the engine's reply has no completion text", retryable=False)
        usage = getattr(raw, "usage", None)
        return Generation(
            text=out.strip(),
            finish_reason="length" if getattr(choices[0], "finish_reason", None) == "length" else "stop",
            n_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        )
