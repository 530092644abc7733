"""What the prompt rewriter and the response corrector share: a text-to-text stage in one of three modes.

- **model**: a trained text-to-text model behind a ``TextGenerator`` (a LoRA adapter on the embedded
  model, or a released checkpoint folder used unchanged), prompted with its template.
- **remote**: the same trained adapter served by an inference engine (vLLM's multi-LoRA serving) behind a
  ``rewriters.remote_generator.RemoteGenerator``: the same rendered template goes to the engine's
  text-completion API, with the same decoding, safeguards and traces.
- **prompted**: any ``LLM`` backend (a litellm model string, a local model, the embedded model) given an
  instruction template. No training needed.

:class:`TextStage` holds the modes, the constructors (``from_pretrained``, ``remote``, ``prompted``,
``from_config``), the decoding settings, seeds, ``deterministic()`` and the generate helpers. A stage
subclasses it together with ``PromptStage`` or ``ResponseStage`` and sets the class attributes that
describe it (its config type, checkpoint kind, default template, safeguard settings class, options).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence, TypeVar

from middleware.errors import InputError
from middleware.llm import LLM, make_llm
from middleware.decoding import check_sampling
from middleware.stages import Stage, is_title_request
from middleware.shared_base import SharedBase
from middleware.types import ChatRequest, Message

from .generator import StageGenerator, TextGenerator
from .templates import Template, get_template

__all__ = ["TextStage", "Generated", "resolve_llm", "generation_defaults", "llm_request"]

S = TypeVar("S", bound="TextStage")

#: The keys of a config entry that are settings of every stage (``middleware.stages.Stage``).
_STAGE_KW = ("name", "on_error", "timeout", "skip_if")
#: The keys of a config entry's ``remote:`` mapping (``RemoteGenerator``'s settings).
_REMOTE_KEYS = ("model", "api_base", "api_key", "timeout", "max_retries", "max_concurrency")


@dataclass
class Generated:
    """One generation, whatever produced it."""

    text: str
    finish_reason: str = "stop"


def resolve_llm(llm: "LLM | str | None", **options: Any) -> LLM:
    """An ``LLM`` from a backend, a litellm model string, a local path, or ``"embedded"``/``None``.

    ``"embedded"`` reuses the shared base model (:class:`middleware.shared_base.SharedBase`) so a rewriter,
    a corrector and the chat model hold one copy of the weights.
    """
    if isinstance(llm, LLM):
        return llm
    if llm is None or llm in ("embedded", "local"):
        if options:
            return make_llm(None, **options)
        return SharedBase.get().chat_backend()
    if not isinstance(llm, str):
        raise InputError(f"llm must be an LLM backend or a model string, got {type(llm).__name__}")
    return make_llm(llm, **options)


def generation_defaults(template: Template, generator: Any = None, **given: Any) -> dict[str, Any]:
    """Decoding settings: the checkpoint's (its manifest's ``generation``, when ``generator`` uses its own
    template) or else the template's published ones, overridden by the ``given`` non-``None`` values."""
    gen = dict(template.generation)
    manifest = getattr(generator, "manifest", None)
    if isinstance(manifest, dict) and generator.template is template and isinstance(manifest.get("generation"), dict):
        gen.update(manifest["generation"])
    out = {
        "temperature": float(gen.get("temperature", 0.0)),
        "top_p": float(gen.get("top_p", 1.0)),
        "max_new_tokens": int(gen.get("max_new_tokens", 512)),
    }
    out.update({k: v for k, v in given.items() if v is not None})
    check_sampling(out["temperature"], None, out["top_p"])
    if out["max_new_tokens"] < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {out['max_new_tokens']!r}")
    return out


def llm_request(content: str, params: dict[str, Any], seed: int | None) -> ChatRequest:
    """The one-message request a prompted-mode stage sends its ``LLM``, with the stage's decoding."""
    return ChatRequest(
        messages=[Message(role="user", content=content)],
        temperature=params["temperature"],
        top_p=params["top_p"] if params["top_p"] < 1 else None,
        max_tokens=params["max_new_tokens"],
        seed=seed,
    )


def _run_generator(generator: StageGenerator, prompts: list[str], params: dict[str, Any], seed: int | None) -> list[Generated]:
    gens = generator.generate_ex(
        prompts,
        max_new_tokens=params["max_new_tokens"],
        temperature=params["temperature"],
        top_p=params["top_p"],
        seed=seed,
    )
    return [Generated(g.text, g.finish_reason) for g in gens]


def _run_llm(llm: LLM, prompts: list[str], params: dict[str, Any], seed: int | None) -> list[Generated]:
    """One request per prompt; several go to the backend as one batch (padded batch locally, concurrent
    requests remotely)."""
    requests = [llm_request(p, params, seed) for p in prompts]
    responses = [llm.complete(requests[0])] if len(requests) == 1 else llm.batch(requests)
    return [Generated(r.text, str(r.finish_reason)) for r in responses]


def _skip_if(value: Any) -> Callable[[ChatRequest], bool] | None:
    if value is None or callable(value):
        return value
    if value in ("title_requests", "titles", True):
        return is_title_request
    raise InputError(f"skip_if must be a callable or 'title_requests', got {value!r}")


def _remote_spec(kind: str, remote: "str | dict[str, Any]") -> dict[str, Any]:
    """A config entry's ``remote:`` (a model string, or a mapping of ``_REMOTE_KEYS``), checked."""
    spec = {"model": remote} if isinstance(remote, str) else remote
    if not isinstance(spec, dict):
        raise InputError(f"{kind}: remote must be a model string or a mapping with model, api_base, ...; got {type(remote).__name__}")
    unknown = sorted(set(spec) - set(_REMOTE_KEYS))
    if unknown:
        raise InputError(f"{kind}: remote: unknown key(s) {', '.join(map(str, unknown))}; expected {', '.join(_REMOTE_KEYS)}")
    if not spec.get("model"):
        raise InputError(f"{kind}: remote needs model (the served adapter, e.g. hosted_vllm/{kind.split('_')[-1]})")
    return dict(spec)


def _stage_template(template: "str | Template | None", generator: Any, default: str, fields: set[str], wanted: str) -> Template:
    """The template a text-to-text stage uses: ``template`` if given, else the generator's own, else
    ``default``; it must take exactly ``fields`` (``wanted`` says so in the error)."""
    if template is not None:
        chosen = get_template(template)
    elif generator is not None:
        chosen = generator.template
    else:
        chosen = get_template(default)
    if set(chosen.fields) != fields:
        raise InputError(f"template {chosen.name!r} takes fields {list(chosen.fields)}; {wanted}")
    return chosen


class TextStage(Stage):
    """A text-to-text stage in model or remote mode (``generator``) or prompted mode (``llm``); see the
    module documentation. Subclasses set the class attributes below and add ``PromptStage`` or ``ResponseStage``.

    Args:
        generator: a ``rewriters.generator.TextGenerator`` (model mode) or a
            ``rewriters.remote_generator.RemoteGenerator`` (remote mode).
        llm: an ``LLM`` backend (prompted mode); exactly one of ``generator`` and ``llm``.
        template: the template name or ``Template``; default: the generator's own, or ``default_template``.
        temperature, top_p, max_new_tokens: decoding; default: the checkpoint's settings, else the
            template's published ones. ``temperature=0`` decodes greedily.
        seed: seed for sampling (``None``: the request's seed, if any).
        check: the safeguard settings (an instance of ``check_type``; default: its defaults).
        name, on_error, timeout, skip_if: the stage settings (see ``middleware.stages.Stage``).
    """

    #: ``type:`` of the stage in pipeline configs, and the prefix of its config errors.
    config_type: ClassVar[str]
    #: ``kind`` of its trained checkpoints (``alignware train <kind>``).
    checkpoint_kind: ClassVar[str]
    #: what ``path`` names in model mode, for the config error that asks for it.
    checkpoint_description: ClassVar[str]
    #: the template of prompted mode when none is given.
    default_template: ClassVar[str]
    #: the fields its templates take, and the error's words when a template takes others.
    template_fields: ClassVar[frozenset[str]]
    template_error: ClassVar[str]
    #: the safeguard settings class; its fields are config keys too.
    check_type: ClassVar[type[Any]]
    #: the other config keys (constructor arguments) besides the stage settings.
    config_options: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        generator: StageGenerator | None = None,
        *,
        llm: LLM | None = None,
        template: "str | Template | None" = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        check: Any = None,
        name: str | None = None,
        on_error: str = "pass",
        timeout: float | None = None,
        skip_if: Callable[[ChatRequest], bool] | None = None,
    ) -> None:
        super().__init__(name=name, on_error=on_error, timeout=timeout, skip_if=skip_if)  # type: ignore[arg-type]
        if (generator is None) == (llm is None):
            raise InputError(f"{type(self).__name__} needs exactly one of generator (model mode) or llm (prompted mode)")
        self.generator = generator
        self.llm = llm
        self.mode = "prompted" if generator is None else "remote" if getattr(generator, "served", False) else "model"
        self.template = _stage_template(
            template, generator, self.default_template, set(self.template_fields), self.template_error
        )
        self.params = generation_defaults(
            self.template, generator, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens
        )
        self.seed = seed
        self.check = check or self.check_type()

    def deterministic(self) -> bool:
        """Greedy decoding (``temperature=0``; in prompted mode, an LLM that reports itself deterministic), no
        timeout, and not remote (an engine batching other requests need not answer twice alike)."""
        if self.params["temperature"] or self.timeout is not None or self.mode == "remote":
            return False
        return self.mode == "model" or self._backend().deterministic(llm_request("", self.params, None))

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls: type[S],
        path: "str | os.PathLike[str]",
        *,
        base: Any = None,
        template: "str | Template | None" = None,
        **stage_kw: Any,
    ) -> S:
        """Model mode from a folder: an adapter trained by ``alignware train <kind>`` (its manifest names
        its template and base model), or a released checkpoint folder used unchanged (the kind's
        published template unless ``template`` says otherwise)."""
        gen = TextGenerator.from_pretrained(path, base=base, template=template, kind=cls.checkpoint_kind)
        return cls(gen, **stage_kw)

    @classmethod
    def remote(
        cls: type[S],
        model: str,
        *,
        path: "str | os.PathLike[str] | None" = None,
        template: "str | Template | None" = None,
        api_base: str | None = None,
        api_key: str | None = None,
        remote_options: dict[str, Any] | None = None,
        **stage_kw: Any,
    ) -> S:
        """Remote mode: the adapter an inference engine serves as ``model`` (``"hosted_vllm/NAME"``, NAME its
        ``--lora-modules`` name, at ``api_base``) gets the rendered template through the text-completion API.

        ``template`` is the one the adapter was trained with; without it, ``path`` (the adapter's local
        folder, or a copy of it) gives it from its manifest, with its decoding defaults. One of the two is
        needed. ``remote_options``: ``timeout``, ``max_retries``, ``max_concurrency`` and litellm arguments
        of the ``RemoteGenerator``; ``stage_kw``: the stage's own settings.
        """
        from .remote_generator import RemoteGenerator  # imports litellm (seconds): only when remote mode is used

        options: dict[str, Any] = dict(remote_options or {}, api_base=api_base, api_key=api_key, kind=cls.checkpoint_kind)
        if path is not None:
            gen = RemoteGenerator.from_folder(path, model, template=template, **options)
        elif template is not None:
            gen = RemoteGenerator(model, template=template, **options)
        else:
            raise InputError(
                f"{cls.config_type}: remote mode needs template (the one {model!r} was trained with) or path (the "
                "adapter's local folder, whose manifest names it)"
            )
        return cls(gen, **stage_kw)

    @classmethod
    def prompted(cls: type[S], llm: "LLM | str | None" = "embedded", *, llm_options: dict[str, Any] | None = None, **kw: Any) -> S:
        """Prompted mode: ``llm`` (a backend, a litellm model string such as ``"openai/gpt-4o-mini"``, a
        local model path, or ``"embedded"``) follows the stage's instruction template."""
        return cls(llm=resolve_llm(llm, **(llm_options or {})), **kw)

    @classmethod
    def from_config(
        cls: type[S],
        *,
        mode: str | None = None,
        path: str | None = None,
        llm: str | None = None,
        base: str | None = None,
        llm_options: dict[str, Any] | None = None,
        remote: "str | dict[str, Any] | None" = None,
        **params: Any,
    ) -> S:
        """Build from a pipeline config entry (``type:`` the class's ``config_type``).

        ``mode``: ``"model"`` (needs ``path``), ``"remote"`` (needs ``remote``: the served adapter's model
        string, or a mapping with ``model``, ``api_base``, ``api_key``, ``timeout``, ``max_retries``,
        ``max_concurrency``; and ``template`` or ``path``, the adapter's local folder whose manifest names
        it) or ``"prompted"`` (uses ``llm``, default ``"embedded"``); left out, it is ``"remote"`` when
        ``remote`` is given, ``"model"`` when ``path`` is, else ``"prompted"``. Other keys: the
        class's ``config_options``, the fields of its ``check_type``, ``name``, ``on_error``, ``timeout``,
        ``skip_if`` (``"title_requests"``).
        """
        kind = cls.config_type
        params = dict(params)
        check_keys = {k: params.pop(k) for k in list(params) if k in cls.check_type.__dataclass_fields__}
        unknown = sorted(set(params) - {*cls.config_options, *_STAGE_KW})
        if unknown:
            raise TypeError(f"{kind}: unknown option(s) {', '.join(unknown)}")
        if "skip_if" in params:
            params["skip_if"] = _skip_if(params["skip_if"])
        if check_keys:
            params["check"] = cls.check_type(**check_keys)
        mode = mode or ("remote" if remote else "model" if path else "prompted")
        if remote and mode != "remote":
            raise InputError(f"{kind}: remote applies to mode 'remote'; mode {mode!r} does not use it")
        if mode == "remote":
            if not remote:
                raise InputError(f"{kind}: mode 'remote' needs remote (e.g. {{model: hosted_vllm/NAME, api_base: http://HOST:8000/v1}})")
            if llm is not None or base is not None:
                raise InputError(f"{kind}: llm and base do not apply to mode 'remote' (the engine serves the base)")
            spec = _remote_spec(kind, remote)
            model = spec.pop("model")
            return cls.remote(
                model, path=path, api_base=spec.pop("api_base", None), api_key=spec.pop("api_key", None),
                remote_options=spec, **params,
            )
        if mode == "model":
            if not path:
                raise InputError(f"{kind}: mode 'model' needs path ({cls.checkpoint_description})")
            if llm is not None:
                raise InputError(f"{kind}: llm applies to mode 'prompted'; mode 'model' uses path")
            return cls.from_pretrained(path, base=base, **params)
        if mode == "prompted":
            if path:
                raise InputError(f"{kind}: path applies to mode 'model'; mode 'prompted' uses llm")
            return cls.prompted(llm or "embedded", llm_options=llm_options, **params)
        raise InputError(f"{kind}: mode must be 'model', 'remote' or 'prompted', got {mode!r}")

    # -- generation ---------------------------------------------------------------------
    def _seed(self, request: ChatRequest | None) -> int | None:
        """The stage's own seed, else the request's."""
        if self.seed is not None:
            return self.seed
        return request.seed if request is not None else None

    def _backend(self) -> LLM:
        assert self.llm is not None
        return self.llm

    def _generate_many(self, prompts: Sequence[str], params: dict[str, Any], seed: int | None) -> list[Generated]:
        """Continue rendered ``prompts``: one batched generation (model mode), one text-completion request
        each (remote mode) or one chat request each (prompted mode), sent together."""
        if self.generator is not None:
            return _run_generator(self.generator, list(prompts), params, seed)
        return _run_llm(self._backend(), list(prompts), params, seed)

    def _generate_one(self, prompt: str, params: dict[str, Any], seed: int | None) -> Generated:
        """Continue one rendered prompt."""
        return self._generate_many([prompt], params, seed)[0]
