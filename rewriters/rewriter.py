"""The BPO prompt rewriter: a ``PromptStage`` that rewrites the user's last message into a prompt the
LLM answers better (Black-Box Prompt Optimization, Cheng et al. 2023), and its training data builder.

Two modes:

- **model**: a trained text-to-text model (by default a LoRA adapter on the embedded model, or a released
  BPO checkpoint folder, unchanged) prompted with its template (``"bpo"`` by default). Decoding follows
  BPO's published inference settings: ``top_p`` 0.9, ``temperature`` 0.6 (``temperature=0`` is greedy).
- **prompted**: any ``LLM`` backend (a litellm model string, a local model, the embedded model) given an
  expert-prompt-engineer instruction (template ``"bpo-instruction"``). No training needed.

Whatever the mode, a rewrite that fails a safeguard is dropped: the request goes on with the original
prompt and the stage's trace says why (see :func:`check_rewrite`).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from middleware.errors import BackendError, InputError
from middleware.llm import LLM
from middleware.stages import PromptStage, batch_item, is_title_request, note
from middleware.types import ChatRequest, Message, PreferencePair, load_pairs

if TYPE_CHECKING:  # pragma: no cover
    from .generator import TextGenerator
    from .sft import SFTExample
    from .templates import Template

log = logging.getLogger("alignware")

__all__ = [
    "PromptRewriter",
    "RewriteCheck",
    "check_rewrite",
    "clean_rewrite",
    "build_rewriter_data",
    "RewriterDataReport",
    "RewardChoice",
    "select_by_reward",
    "TEACHER_PROMPT",
    "teacher_prompt",
    "parse_teacher_output",
    "bpo_filter",
    "train_main",
]

# -- BPO's length bounds ----------------------------------------------------------------------
#: BPO's data filter (``src/data_construction/process_optimized_prompts.py``) drops a pair when the
#: original has more than twice the words of the optimized prompt, or the optimized prompt more than six
#: times the words of the original (words = whitespace-separated tokens).
BPO_MIN_RATIO = 0.5
BPO_MAX_RATIO = 6.0
#: At inference a very short prompt ("write a poem") may grow by a sentence or two without being an
#: answer, so the upper bound is ``max(max_ratio * words, words + slack_words)``.
DEFAULT_SLACK_WORDS = 16

_WORD = re.compile(r"\S+")
_TOKEN = re.compile(r"[^\W_]+")
_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just let me more most my
    myself no nor not now of off on once only or other our ours ourselves out over own please same she should
    so some such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your yours
    yourself yourselves tell give write make want need know get like also use using one two""".split()
)

#: Openings that mark an answer to the prompt rather than a rewrite of it.
_ANSWER_OPENING = re.compile(
    r"^\W*(?:sure|certainly|of course|absolutely|okay|ok|great question|good question|yes|no|"
    r"here(?:'s|’s| is| are)|i(?:'m|’m| am) (?:sorry|happy|glad|unable|not able)|i can(?:not|'t|’t)|"
    r"i (?:would|will|'d|’d) (?:be happy|recommend|suggest)|as an ai|unfortunately|hello|hi)\b",
    re.IGNORECASE,
)

#: Labels a model may put in front of its rewrite; stripped before the checks.
_LABEL = re.compile(
    r"^\s*(?:\*\*|__|#+\s*)?(?:(?:here(?:'s|’s| is)\s+)?(?:an?\s+|the\s+|my\s+)?"
    r"(?:improved|optimi[sz]ed|rewritten|revised|refined|better|enhanced|new)\s+"
    r"(?:version\s+of\s+(?:the|your)\s+)?(?:prompt|instruction|request|query)[^:\n]{0,60}|"
    r"(?:optimi[sz]ed|improved|rewritten|revised)\s+(?:prompt|instruction)|prompt)\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?\s*",
    re.IGNORECASE,
)
#: Words that make a sentence a request ("Explain...", "Can you...", "Please..."): a rewrite of a question
#: that is neither a question nor contains one of these is a statement, i.e. an answer. (On the BPO pairs,
#: none of the 105 optimized prompts of questions is flagged by this rule.)
_REQUEST_WORD = re.compile(
    r"\b(?:please|explain|describe|provide|give|list|write|tell|suggest|recommend|help|create|compare|discuss|"
    r"outline|summari[sz]e|identify|analy[sz]e|share|offer|generate|design|develop|draft|compose|calculate|"
    r"determine|find|make|plan|prepare|propose|rewrite|translate|evaluate|assess|consider|imagine|pretend|"
    r"show|teach|guide|answer|respond|define|clarify|elaborate|name|brainstorm|convert|classify|rank|choose|"
    r"select|edit|correct|improve|fix|solve|compute|estimate|predict|review|i\s+need|i\s+want|i'd\s+like|"
    r"i\s+would\s+like|can\s+you|could\s+you|would\s+you)\b",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"(?<![\w.])[-+−]?(\d+(?:,\d{3})*(?:\.\d+)?)")
#: A prompt that sets a role ("As a pirate captain, ...", "Imagine you are a time traveller ...").
_ROLE = re.compile(
    r"^\W*(?:as an? |imagine (?:that )?(?:you are|you're) (?:an? )?|pretend (?:to be|you are|you're) (?:an? )?|"
    r"you are an? |act as (?:an? )?)([^,.?!:;]{3,80})",
    re.IGNORECASE,
)

_ROLE_QUALIFIER = re.compile(r"\s+(?:from|in|on|at|with|who|that|of|for|during|living|working)\s+", re.IGNORECASE)


def _numbers(text: str) -> set[str]:
    return {m.replace(",", "") for m in _NUMBER.findall(text)}


_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`"}


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _stems(text: str) -> set[str]:
    """Crude content stems: lowercased alphanumeric tokens of 3+ characters, not stopwords, cut to 5 letters."""
    return {t[:5] for t in (w.lower() for w in _TOKEN.findall(text)) if len(t) >= 3 and t not in _STOPWORDS}


def _first_word(text: str) -> str:
    m = _TOKEN.search(text)
    return m.group(0).lower() if m else ""


def clean_rewrite(text: str) -> str:
    """Strip what models wrap around a rewrite: a trailing ``[END]``, a label such as ``Optimized prompt:``
    or ``Here is an improved version of the prompt:``, code fences and quotes around the whole text."""
    t = text.split("[END]")[0].strip()
    if t.startswith("```") and t.endswith("```") and len(t) >= 6:
        t = t[3:-3]
        t = t.split("\n", 1)[1] if "\n" in t and not t.split("\n", 1)[0].strip().count(" ") else t
        t = t.strip()
    for _ in range(2):
        m = _LABEL.match(t)
        if m and m.end() < len(t):
            t = t[m.end() :].strip()
    if len(t) >= 2 and t[0] in _QUOTES and t.endswith(_QUOTES[t[0]]) and t.count(t[0]) <= 2:
        t = t[1:-1].strip()
    return t


@dataclass(frozen=True)
class RewriteCheck:
    """The safeguard settings of a rewriter (see :func:`check_rewrite`)."""

    min_ratio: float = BPO_MIN_RATIO
    max_ratio: float = BPO_MAX_RATIO
    slack_words: int = DEFAULT_SLACK_WORDS
    min_key_overlap: float = 0.25
    check_answer: bool = True
    keep_numbers: bool = True
    keep_role: bool = True


def check_rewrite(original: str, rewrite: str, check: RewriteCheck = RewriteCheck()) -> str | None:
    """Why ``rewrite`` must not replace ``original``, or ``None`` when it may.

    Rules, in order:

    1. ``empty``: nothing left after :func:`clean_rewrite`.
    2. ``too short``: fewer than ``min_ratio`` × the original's words (BPO: the original may have at most
       twice the words of the rewrite).
    3. ``too long``: more than ``max(max_ratio × words, words + slack_words)`` words (BPO: at most six
       times the words; the slack lets a two-word prompt grow into a sentence).
    4. ``answers the prompt``: the rewrite opens like an answer ("Sure", "Here is", "I'm sorry", "As an
       AI"...) while the original does not open with the same word; or the original is a question and
       the rewrite is a statement (no question mark, no request word such as "explain" or "please").
    5. ``drops numbers``: a number of the original is missing from the rewrite (``keep_numbers``).
    6. ``drops the role``: the original sets a role ("As a pirate captain, ...", "Imagine you are ...")
       and none of the role's words remain (``keep_role``).
    7. ``lost the request's key content``: the original has 3+ content words (no stopwords) and fewer than
       ``min_key_overlap`` of them (compared by their first five letters) remain in the rewrite.
    """
    if not rewrite.strip():
        return "empty rewrite"
    n_orig, n_new = len(_words(original)), len(_words(rewrite))
    if n_orig and n_new < check.min_ratio * n_orig:
        return f"rewrite too short ({n_new} words for a {n_orig}-word prompt)"
    limit = max(check.max_ratio * n_orig, n_orig + check.slack_words)
    if n_new > limit:
        return f"rewrite too long ({n_new} words for a {n_orig}-word prompt; limit {int(limit)})"
    if not check.check_answer:
        return None
    m = _ANSWER_OPENING.match(rewrite)
    if m and _first_word(m.group(0)) != _first_word(original):
        return f"rewrite answers the prompt instead of rewriting it (opens with {m.group(0).strip()!r})"
    if original.rstrip().endswith("?") and "?" not in rewrite and not _REQUEST_WORD.search(rewrite):
        return "rewrite answers the prompt instead of rewriting it (a statement, neither a question nor a request)"
    if check.keep_numbers:
        lost = sorted(_numbers(original) - _numbers(rewrite), key=lambda n: original.find(n))
        if lost:
            return f"rewrite drops numbers the prompt gives ({', '.join(lost[:5])})"
    if check.keep_role:
        m = _ROLE.match(original)
        # the role itself, without what qualifies it ("a time traveler from the year 3000" -> "time traveler")
        role_text = _ROLE_QUALIFIER.split(m.group(1))[0].strip() if m else ""
        role = _stems(role_text)
        if role and not role & _stems(rewrite):
            return f"rewrite drops the role the prompt sets ({role_text!r})"
    key = _stems(original)
    if len(key) >= 3:
        kept = len(key & _stems(rewrite)) / len(key)
        if kept < check.min_key_overlap:
            return f"rewrite lost the request's key content ({kept:.0%} of its content words kept)"
    return None


# -- backends ---------------------------------------------------------------------------------
def _resolve_llm(llm: "LLM | str | None", **options: Any) -> LLM:
    """An ``LLM`` from a backend, a litellm model string, a local path, or ``"embedded"``/``None``.

    ``"embedded"`` reuses the shared base model (:class:`rewriters.engine.SharedBase`) so a rewriter,
    a corrector and the chat model hold one copy of the weights.
    """
    if isinstance(llm, LLM):
        return llm
    if llm is None or llm in ("embedded", "local"):
        if options:
            from middleware.llm import make_llm

            return make_llm(None, **options)
        from middleware.shared_base import SharedBase

        return SharedBase.get().chat_backend()
    if not isinstance(llm, str):
        raise InputError(f"llm must be an LLM backend or a model string, got {type(llm).__name__}")
    from middleware.llm import make_llm

    return make_llm(llm, **options)


def _generation_defaults(template: "Template", generator: Any = None, **given: Any) -> dict[str, Any]:
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
    from middleware.decoding import check_sampling

    check_sampling(out["temperature"], None)
    if not 0 < out["top_p"] <= 1:
        raise InputError(f"top_p must be in (0, 1], got {out['top_p']!r}")
    if out["max_new_tokens"] < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {out['max_new_tokens']!r}")
    return out


@dataclass
class _Out:
    """One generation, whatever produced it."""

    text: str
    finish_reason: str = "stop"


def _deterministic(stage: Any) -> bool:
    """A rewriter or corrector whose decoding is greedy (in prompted mode: and its LLM says so), with no timeout."""
    if stage.params["temperature"] or stage.timeout is not None:
        return False
    return stage.mode == "model" or stage.llm.deterministic(_llm_request("", stage.params, None))


def _run_generator(generator: "TextGenerator", prompts: list[str], params: dict[str, Any], seed: int | None) -> list[_Out]:
    gens = generator.generate_ex(
        prompts,
        max_new_tokens=params["max_new_tokens"],
        temperature=params["temperature"],
        top_p=params["top_p"],
        seed=seed,
    )
    return [_Out(g.text, g.finish_reason) for g in gens]


def _run_llm(llm: LLM, prompts: list[str], params: dict[str, Any], seed: int | None) -> list[_Out]:
    """One request per prompt; several go to the backend as one batch (padded batch locally, concurrent
    requests remotely)."""
    requests = [_llm_request(p, params, seed) for p in prompts]
    responses = [llm.complete(requests[0])] if len(requests) == 1 else llm.batch(requests)
    return [_Out(r.text, str(r.finish_reason)) for r in responses]


def _llm_request(content: str, params: dict[str, Any], seed: int | None) -> ChatRequest:
    return ChatRequest(
        messages=[Message(role="user", content=content)],
        temperature=params["temperature"],
        top_p=params["top_p"] if params["top_p"] < 1 else None,
        max_tokens=params["max_new_tokens"],
        seed=seed,
    )


def _skip_if(value: Any) -> Callable[[ChatRequest], bool] | None:
    if value is None or callable(value):
        return value
    if value in ("title_requests", "titles", True):
        return is_title_request
    raise InputError(f"skip_if must be a callable or 'title_requests', got {value!r}")


def _stage_template(template: "str | Template | None", generator: Any, default: str, fields: set[str], wanted: str) -> "Template":
    """The template a text-to-text stage uses: ``template`` if given, else the generator's own, else
    ``default``; it must take exactly ``fields`` (``wanted`` says so in the error)."""
    from .templates import get_template

    if template is not None:
        chosen = get_template(template)
    elif generator is not None:
        chosen = generator.template
    else:
        chosen = get_template(default)
    if set(chosen.fields) != fields:
        raise InputError(f"template {chosen.name!r} takes fields {list(chosen.fields)}; {wanted}")
    return chosen


_STAGE_KW = ("name", "on_error", "timeout", "skip_if")


def _stage_from_config(
    cls: Any,
    kind: str,
    checkpoint: str,
    check_cls: Any,
    options: Sequence[str],
    *,
    mode: str | None,
    path: str | None,
    llm: str | None,
    base: str | None,
    llm_options: dict[str, Any] | None,
    params: dict[str, Any],
) -> Any:
    """The ``from_config`` of both text-to-text stages: split out the safeguard fields (``check_cls``),
    refuse unknown keys, and build ``cls`` in model mode (``path``) or prompted mode (``llm``)."""
    params = dict(params)
    check_keys = {k: params.pop(k) for k in list(params) if k in check_cls.__dataclass_fields__}
    unknown = sorted(set(params) - {*options, *_STAGE_KW})
    if unknown:
        raise TypeError(f"{kind}: unknown option(s) {', '.join(unknown)}")
    if "skip_if" in params:
        params["skip_if"] = _skip_if(params["skip_if"])
    if check_keys:
        params["check"] = check_cls(**check_keys)
    mode = mode or ("model" if path else "prompted")
    if mode == "model":
        if not path:
            raise InputError(f"{kind}: mode 'model' needs path ({checkpoint})")
        if llm is not None:
            raise InputError(f"{kind}: llm applies to mode 'prompted'; mode 'model' uses path")
        return cls.from_pretrained(path, base=base, **params)
    if mode == "prompted":
        if path:
            raise InputError(f"{kind}: path applies to mode 'model'; mode 'prompted' uses llm")
        return cls.prompted(llm or "embedded", llm_options=llm_options, **params)
    raise InputError(f"{kind}: mode must be 'model' or 'prompted', got {mode!r}")


# -- the stage --------------------------------------------------------------------------------
class PromptRewriter(PromptStage):
    """Rewrites the last user message of each request (BPO); the rest of the conversation is kept as it
    is. The rewriter sees the last user message only, as BPO was trained on single prompts.

    Build it with :meth:`from_pretrained` (model mode), :meth:`prompted` (any LLM) or :meth:`from_config`.

    Args:
        generator: a ``rewriters.engine.TextGenerator`` (model mode).
        llm: an ``LLM`` backend (prompted mode); exactly one of ``generator`` and ``llm``.
        template: the template name or ``Template``; default: the generator's own, or ``"bpo-instruction"``.
        temperature, top_p, max_new_tokens: decoding; default: the checkpoint's settings, else the
            template's published ones (BPO: temperature 0.6, top_p 0.9). ``temperature=0`` decodes greedily.
        seed: seed for sampling (``None``: the request's seed, if any).
        check: the safeguard settings (:class:`RewriteCheck`).
        name, on_error, timeout, skip_if: the stage settings (see ``middleware.stages.Stage``).
    """

    def __init__(
        self,
        generator: "TextGenerator | None" = None,
        *,
        llm: "LLM | None" = None,
        template: "str | Template | None" = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        check: RewriteCheck | None = None,
        name: str | None = None,
        on_error: str = "pass",
        timeout: float | None = None,
        skip_if: Callable[[ChatRequest], bool] | None = None,
    ) -> None:
        super().__init__(name=name, on_error=on_error, timeout=timeout, skip_if=skip_if)  # type: ignore[arg-type]
        if (generator is None) == (llm is None):
            raise InputError("PromptRewriter needs exactly one of generator (model mode) or llm (prompted mode)")
        self.generator = generator
        self.llm = llm
        self.mode = "model" if generator is not None else "prompted"
        self.template = _stage_template(
            template, generator, "bpo-instruction", {"prompt"}, "a rewriter template takes exactly one field, 'prompt'"
        )
        self.params = _generation_defaults(
            self.template, generator, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens
        )
        self.seed = seed
        self.check = check or RewriteCheck()

    def __repr__(self) -> str:
        return f"PromptRewriter(name={self.name!r}, mode={self.mode!r}, template={self.template.name!r})"

    def deterministic(self) -> bool:
        """Greedy decoding (``temperature=0``; in prompted mode, an LLM that reports itself deterministic), no timeout."""
        return _deterministic(self)

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: "str | os.PathLike[str]",
        *,
        base: Any = None,
        template: "str | Template | None" = None,
        **stage_kw: Any,
    ) -> "PromptRewriter":
        """Model mode from a folder: an adapter trained by ``alignware train rewriter`` (its manifest
        names its template and base model), or a released BPO checkpoint folder used unchanged (template
        ``"bpo"`` unless ``template`` says otherwise)."""
        from .generator import TextGenerator

        gen = TextGenerator.from_pretrained(path, base=base, template=template, kind="rewriter")
        return cls(gen, **stage_kw)

    @classmethod
    def prompted(cls, llm: "LLM | str | None" = "embedded", *, llm_options: dict[str, Any] | None = None, **kw: Any) -> "PromptRewriter":
        """Prompted mode: ``llm`` (a backend, a litellm model string such as ``"openai/gpt-4o-mini"``, a
        local model path, or ``"embedded"``) rewrites the prompt following ``"bpo-instruction"``."""
        return cls(llm=_resolve_llm(llm, **(llm_options or {})), **kw)

    @classmethod
    def from_config(
        cls,
        *,
        mode: str | None = None,
        path: str | None = None,
        llm: str | None = None,
        base: str | None = None,
        llm_options: dict[str, Any] | None = None,
        **params: Any,
    ) -> "PromptRewriter":
        """Build from a pipeline config entry (``type: prompt_rewriter``).

        ``mode``: ``"model"`` (needs ``path``) or ``"prompted"`` (uses ``llm``, default ``"embedded"``);
        left out, it is ``"model"`` when ``path`` is given, else ``"prompted"``. Other keys: ``template``,
        ``temperature``, ``top_p``, ``max_new_tokens``, ``seed``, ``min_ratio``, ``max_ratio``,
        ``slack_words``, ``min_key_overlap``, ``check_answer``, ``name``, ``on_error``, ``timeout``,
        ``skip_if`` (``"title_requests"``).
        """
        return _stage_from_config(
            cls, "prompt_rewriter", "a trained adapter or BPO checkpoint folder", RewriteCheck,
            ("template", "temperature", "top_p", "max_new_tokens", "seed"),
            mode=mode, path=path, llm=llm, base=base, llm_options=llm_options, params=params,
        )

    # -- rewriting ------------------------------------------------------------------------
    def _seed(self, request: ChatRequest) -> int | None:
        return self.seed if self.seed is not None else request.seed

    def rewrite(self, prompt: str, *, seed: int | None = None) -> tuple[str, str | None]:
        """Rewrite one prompt; return ``(text, reason)``: the rewrite and ``None``, or the original
        prompt and why the rewrite was dropped."""
        return self._decide(prompt, self._generate([prompt], seed)[0])

    def rewrite_many(self, prompts: Sequence[str], *, seed: int | None = None) -> list[tuple[str, str | None]]:
        """Rewrite many prompts (one batch in model mode); same results as :meth:`rewrite`."""
        outs = self._generate(list(prompts), seed)
        return [self._decide(p, o) for p, o in zip(prompts, outs)]

    def _generate(self, prompts: list[str], seed: int | None) -> list[_Out]:
        rendered = [self.template.render(prompt=p) for p in prompts]
        if self.generator is not None:
            return _run_generator(self.generator, rendered, self.params, seed)
        assert self.llm is not None
        return _run_llm(self.llm, rendered, self.params, seed)

    def _decide(self, prompt: str, out: _Out) -> tuple[str, str | None]:
        if out.finish_reason == "length":
            return prompt, f"rewrite cut off at max_new_tokens={self.params['max_new_tokens']}"
        text = clean_rewrite(out.text)
        reason = check_rewrite(prompt, text, self.check)
        if reason is not None:
            return prompt, reason
        return text, None

    def _apply(self, request: ChatRequest, out: _Out) -> ChatRequest:
        prompt = request.last_user_message
        text, reason = self._decide(prompt, out)
        if reason is not None:
            note(f"kept the original prompt: {reason}")
            return request
        if text == prompt:
            note("the rewrite is the original prompt")
            return request
        return request.with_last_user_message(text)

    def process(self, request: ChatRequest) -> ChatRequest:
        """Rewrite the last user message; keep the original (with a trace note) when a safeguard fails."""
        prompt = request.last_user_message
        if not prompt.strip():
            note("empty prompt: nothing to rewrite")
            return request
        return self._apply(request, self._generate([prompt], self._seed(request))[0])

    def process_batch(self, requests: list[ChatRequest]) -> list[ChatRequest]:
        """Rewrite many requests with one batched generation (model mode) or one ``LLM.batch`` call
        (prompted mode); each request gets the result ``process`` would give it."""
        seeds = {self._seed(r) for r in requests}
        if len(seeds) > 1:  # one generation has one seed: requests asking for different ones go one by one
            out = []
            for i, r in enumerate(requests):
                with batch_item(i):
                    out.append(self.process(r))
            return out
        prompts = [r.last_user_message for r in requests]
        todo = [i for i, p in enumerate(prompts) if p.strip()]
        result = list(requests)
        for i in sorted(set(range(len(requests))) - set(todo)):
            with batch_item(i):
                note("empty prompt: nothing to rewrite")
        if todo:
            outs = self._generate([prompts[i] for i in todo], seeds.pop())
            for i, o in zip(todo, outs):
                with batch_item(i):
                    result[i] = self._apply(requests[i], o)
        return result

    async def aprocess(self, request: ChatRequest) -> ChatRequest:
        """Async twin; prompted mode awaits the backend's native ``acomplete``."""
        if self.llm is None:
            return await super().aprocess(request)
        prompt = request.last_user_message
        if not prompt.strip():
            note("empty prompt: nothing to rewrite")
            return request
        resp = await self.llm.acomplete(
            _llm_request(self.template.render(prompt=prompt), self.params, self._seed(request))
        )
        return self._apply(request, _Out(resp.text, str(resp.finish_reason)))


# -- training data ----------------------------------------------------------------------------
TEACHER_PROMPT = """{history}instruction: "{instruction}"

bad response:
"{rejected}"

good response:
"{chosen}"

Compare the good response with the bad response on correctness (whether the response follows the \
instruction and is accurate; most important), helpfulness (depth, creativity, coherence) and harmlessness. \
Then, as an expert prompt engineer, improve my instruction so that it leads to responses like the good \
response rather than the bad one.

Rules:
1. If the instruction raises any safety issue, rewrite it to be completely harmless and safe on the same topic.
2. Keep every piece of information in the original instruction.
3. Do not add detailed content constraints taken from the good response that the instruction does not \
mention, except as examples.
4. Keep any protected parts of the instruction exactly as they are.
5. Never answer the instruction yourself.
6. Keep the original meaning of the instruction and the user's intent.

Answer in exactly this format:
Detailed Comparison Result: xxx
Optimized Instruction: xxx [END]"""


def teacher_prompt(pair: PreferencePair) -> str:
    """The teacher's task for one pair, following BPO's data construction: compare the good (chosen) and
    bad (rejected) responses, then write an optimized instruction. Earlier turns of a multi-turn
    conversation are shown before the instruction as context."""
    history = ""
    if len(pair.prompt) > 1:
        lines = [f"{m.role}: {m.content}" for m in pair.prompt[:-1]]
        history = "conversation so far (context only; optimize the last instruction):\n" + "\n".join(lines) + "\n\n"
    return TEACHER_PROMPT.format(
        history=history, instruction=pair.question, rejected=pair.rejected, chosen=pair.chosen
    )


_OPT_MARK = re.compile(
    r"(?:\*\*|__|#+\s*)?optimi[sz]ed\s+(?:instruction|prompt)\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?", re.IGNORECASE
)
_CRIT_MARK = re.compile(r"^\s*(?:\*\*|__|#+\s*)?detailed\s+comparison\s+result\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?", re.IGNORECASE)


def parse_teacher_output(text: str) -> tuple[str, str]:
    """``(critique, optimized_prompt)`` from a teacher's answer in BPO's format
    (``Detailed Comparison Result: ... Optimized Instruction: ... [END]``).

    Tolerates markdown bold or headings around the labels, ``Optimized Prompt`` for ``Optimized
    Instruction``, a missing ``[END]``, and quotes or code fences around the prompt (read as a string
    literal where they form one, never evaluated). Raises ``ValueError`` when there is no optimized prompt.
    """
    body = text.split("[END]")[0]
    marks = list(_OPT_MARK.finditer(body))
    if not marks:
        raise ValueError("no 'Optimized Instruction:' in the teacher's answer")
    m = marks[-1]
    critique = _CRIT_MARK.sub("", body[: m.start()]).strip()
    prompt = body[m.end() :].strip()
    if prompt.startswith("```") and prompt.endswith("```") and len(prompt) >= 6:
        prompt = prompt[3:-3].strip()
    if len(prompt) >= 2 and prompt[0] in "\"'" and prompt[-1] == prompt[0]:
        try:
            value = ast.literal_eval(prompt)
            if isinstance(value, str):
                prompt = value
        except (ValueError, SyntaxError):
            prompt = prompt[1:-1]
    prompt = prompt.strip().strip("*").strip()
    if not prompt:
        raise ValueError("the teacher's optimized prompt is empty")
    return critique, prompt


def _norm(text: str) -> str:
    return " ".join(_TOKEN.findall(text.lower()))


def _shingles(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _leaks_answer(optimized: str, chosen: str, original: str, n: int = 8, share: float = 0.5, run: int = 20) -> bool:
    """Whether the optimized prompt carries the chosen answer's text (words compared in lower case,
    punctuation ignored; text already in the original prompt does not count):

    - the whole answer, when it has 4+ words;
    - at least ``share`` of the answer's ``n``-word runs;
    - any run of ``run`` consecutive words of the answer.

    Shorter shared runs are common and harmless: answers often restate the task in the prompt's words.
    """
    o, c, p = _norm(optimized), _norm(chosen), _norm(original)
    cw, ow, pw = c.split(), o.split(), p.split()
    if len(cw) >= 4 and c in o and c not in p:
        return True
    if len(cw) < n:
        return False
    grams = _shingles(cw, n) - _shingles(pw, n)
    if grams and len(grams & _shingles(ow, n)) >= share * len(grams):
        return True
    if len(cw) >= run:
        long_runs = _shingles(cw, run) - _shingles(pw, run)
        return bool(long_runs & _shingles(ow, run))
    return False


def bpo_filter(original: str, optimized: str, chosen: str | None = None) -> str | None:
    """BPO's data filters; the reason a pair is dropped, or ``None``.

    ``empty``; ``length_ratio`` (the original has more than twice the words of the optimized prompt, or the
    optimized prompt more than six times the original's, as in BPO's ``process_no_ctx``); ``protected``
    (a ``[protected`` placeholder leaked from the teacher, as in BPO); ``unchanged`` (the optimized prompt
    is the original, ignoring case, spacing and punctuation); ``leaked_answer`` (the optimized prompt
    carries the chosen answer's text, see :func:`_leaks_answer`).
    """
    if not optimized.strip():
        return "empty"
    a, b = len(_words(original)), len(_words(optimized))
    if a and (a / b > 1 / BPO_MIN_RATIO or b / a > BPO_MAX_RATIO):
        return "length_ratio"
    if "[protected" in optimized.lower():
        return "protected"
    if _norm(optimized) == _norm(original):
        return "unchanged"
    if chosen and _leaks_answer(optimized, chosen, original):
        return "leaked_answer"
    return None


@dataclass
class RewriterDataReport:
    """What :func:`build_rewriter_data` did with each row."""

    total: int = 0
    kept: int = 0
    from_data: int = 0
    from_teacher: int = 0
    filtered: Counter = field(default_factory=Counter)
    no_target: int = 0
    teacher_failures: int = 0
    teacher_calls: int = 0
    cache_hits: int = 0
    failures: list[str] = field(default_factory=list)
    #: reward selection (``judge=``): rows judged, rows dropped because the rewrite did not raise the reward
    selection_judged: int = 0
    selection_dropped: int = 0
    selection_mean_gain: float | None = None
    selection_failures: int = 0

    def summary(self) -> str:
        """A few lines for people."""
        lines = [
            f"{self.total} pairs: {self.kept} kept ({self.from_data} with an optimized prompt in the data, "
            f"{self.from_teacher} from the teacher)",
        ]
        if self.filtered:
            parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.filtered.items()))
            lines.append(f"filtered {sum(self.filtered.values())} ({parts})")
        if self.no_target:
            lines.append(f"skipped {self.no_target} without an optimized prompt (no teacher given)")
        if self.teacher_calls or self.cache_hits or self.teacher_failures:
            lines.append(
                f"teacher: {self.teacher_calls} calls, {self.cache_hits} cached, {self.teacher_failures} failed"
            )
        if self.selection_judged or self.selection_failures:
            gain = "n/a" if self.selection_mean_gain is None else f"{self.selection_mean_gain:+.3f}"
            lines.append(
                f"reward selection: {self.selection_judged} rewrites judged on the target model's answers, "
                f"{self.selection_dropped} dropped (no gain), {self.selection_failures} dropped (target failed), "
                f"mean gain {gain}"
            )
        for f in self.failures[:5]:
            lines.append(f"  {f}")
        if len(self.failures) > 5:
            lines.append(f"  ... and {len(self.failures) - 5} more failures")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["filtered"] = dict(self.filtered)
        return d


def _cache_identity(given: Any, llm: LLM) -> str:
    """What names a model in the answer caches: a local folder by its full path (two folders may share a
    name), a function by its module and qualified name, a remote model by its model string and endpoint."""
    if isinstance(given, (str, os.PathLike)):
        path = Path(str(given).removeprefix("local:")).expanduser()
        if path.exists():
            return str(path.resolve())
    fn = getattr(llm, "fn", None)
    if callable(fn):
        return f"{llm.name}:{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    name = str(getattr(llm, "model", None) or llm.name)
    extra = getattr(llm, "litellm_kwargs", None)
    base = extra.get("api_base") if isinstance(extra, dict) else None
    return f"{name}@{base}" if base else name


class _TextCache:
    """Model answers on disk (the teacher's, or the target's for reward selection), one JSON file per
    ``sha256(model + NUL + prompt)``; written atomically."""

    def __init__(self, root: Path, model: str) -> None:
        self.root = root
        self.model = model

    def _path(self, prompt: str) -> Path:
        key = hashlib.sha256(f"{self.model}\0{prompt}".encode("utf-8")).hexdigest()
        return self.root / key[:2] / f"{key}.json"

    def get(self, prompt: str) -> str | None:
        p = self._path(prompt)
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(obj, dict) or obj.get("model") != self.model or obj.get("prompt") != prompt:
            return None  # another entry, or a damaged file: a miss, answered again
        if not isinstance(obj.get("response"), str):
            return None
        return obj["response"]

    def put(self, prompt: str, response: str) -> None:
        p = self._path(prompt)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"model": self.model, "prompt": prompt, "response": response}, f, ensure_ascii=False)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _failure_message(e: BaseException) -> str:
    """What a failed model call says: the provider's own message for backend errors."""
    return e.provider_message if isinstance(e, BackendError) else f"{type(e).__name__}: {e}"


def _as_pairs(pairs: "Iterable[PreferencePair | dict[str, Any]] | str | os.PathLike[str]") -> list[PreferencePair]:
    if isinstance(pairs, (str, os.PathLike)):
        return load_pairs(pairs)
    out = []
    for i, p in enumerate(pairs):
        if isinstance(p, PreferencePair):
            out.append(p)
        else:
            try:
                out.append(PreferencePair.model_validate(p))
            except Exception as e:
                raise InputError(f"pairs[{i}]: not a preference pair: {e}") from None
    return out


@dataclass
class RewardChoice:
    """One row of :func:`select_by_reward`: the target model's answers to the original and the rewritten
    prompt, their rewards (both judged against the original prompt) and whether the rewrite is kept."""

    index: int
    prompt: str
    rewrite: str
    answer: str
    rewritten_answer: str
    reward: float
    rewritten_reward: float
    kept: bool
    error: str | None = None  # the target failed to answer: the row is dropped
    #: the reward of each sampled answer, one per sample (``reward`` / ``rewritten_reward`` are their means;
    #: ``answer`` / ``rewritten_answer`` are the first samples); empty when the target failed
    rewards: list[float] = field(default_factory=list)
    rewritten_rewards: list[float] = field(default_factory=list)

    @property
    def gain(self) -> float:
        return self.rewritten_reward - self.reward


def select_by_reward(
    rows: Sequence[PreferencePair],
    rewrites: "dict[int, str]",
    target: "LLM | str",
    judge: Any,
    *,
    max_tokens: int = 128,
    margin: float = 0.0,
    seed: int = 0,
    samples: int = 1,
    temperature: float | None = None,
    batch_size: int = 16,
    cache_dir: "str | os.PathLike[str] | None" = None,
    progress: bool = True,
) -> list[RewardChoice]:
    """Keep the rewrites that help *this* target model: the target answers each original prompt and its
    rewrite (history kept, ``max_tokens``, ``seed``), the ``judge`` scores both answers against the original
    prompt, and a rewrite is kept when its answer scores more than ``margin`` higher.

    BPO picks its optimized prompts from preferences over a strong model's answers; a small target model
    may not gain from the same rewrites. Training on the kept rows teaches the rewriter the rewrites that
    raise the reward for the model it will serve. Answers are cached on disk (``cache_dir``, default
    ``<alignware cache>/answers``) keyed by the target (its name, or its resolved folder when ``target`` is a
    path), ``max_tokens``, ``seed``, ``temperature`` and the messages, so a rerun does not generate again.

    One answer per side is a noisy comparison: the reward of a small model's answer swings with any change
    of wording. ``samples=K`` with a ``temperature`` samples K answers per side (seeds ``seed`` …
    ``seed+K-1``) and compares the mean rewards.

    Args:
        rows: the preference pairs; ``rewrites`` maps a row index to its rewritten last user message.
        target: the model the rewriter will serve (an ``LLM``, a litellm model string, ``"embedded"``).
        judge: a reward model folder or any object with ``score_batch([(prompt, response), ...])``.
        samples: answers per side; more than 1 needs ``temperature`` > 0 (greedy answers repeat).
        temperature: the target's sampling temperature (``None``: its default decoding, greedy for local models).
    """
    from middleware.evaluate import load_judge

    if max_tokens < 1:
        raise InputError(f"max_tokens must be at least 1, got {max_tokens!r}")
    if samples < 1:
        raise InputError(f"samples must be at least 1, got {samples!r}")
    if samples > 1 and not temperature:
        raise InputError(f"samples={samples} needs a temperature above 0: greedy answers would all be the same")
    llm = _resolve_llm(target)
    judge_obj = load_judge(judge)
    if cache_dir is None:
        from middleware.models import cache_dir as _cache_root

        cache_dir = _cache_root() / "answers"
    name = _cache_identity(target, llm)
    decoding = "" if temperature is None else f"|temperature={temperature}"
    caches = [_TextCache(Path(cache_dir), f"{name}|max_tokens={max_tokens}|seed={seed + k}{decoding}") for k in range(samples)]
    order = sorted(rewrites)
    # j = (2 * pos + side) * samples + k: row order[pos], original (side 0) or rewrite (side 1), sample k
    convs: list[list[Message]] = []
    for i in order:
        for c in (list(rows[i].prompt), list(rows[i].prompt[:-1]) + [Message(role="user", content=rewrites[i])]):
            convs += [c] * samples
    keys = [json.dumps([m.model_dump(mode="json") for m in c], ensure_ascii=False, sort_keys=True) for c in convs]
    texts: list[str | None] = [caches[j % samples].get(k) for j, k in enumerate(keys)]
    todo = [j for j, t in enumerate(texts) if t is None]
    bar = None
    if progress and todo:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="target answers", unit="answer")
        except ImportError:  # pragma: no cover
            bar = None
    errors: dict[int, str] = {}

    def request(j: int) -> ChatRequest:
        return ChatRequest(messages=convs[j], max_tokens=max_tokens, seed=seed + j % samples, temperature=temperature)

    chunks: list[list[int]] = []
    for k in range(samples):  # one batch holds one seed (a batched generation samples from one generator)
        js = [j for j in todo if j % samples == k]
        chunks += [js[b : b + batch_size] for b in range(0, len(js), batch_size)]
    for chunk in chunks:
        try:
            got: list[tuple[int, str]] = [(j, r.text) for j, r in zip(chunk, llm.batch([request(j) for j in chunk]))]
        except Exception:  # one failure fails a batch: ask one by one to lose only the failed rows
            got = []
            for j in chunk:
                try:
                    got.append((j, llm.complete(request(j)).text))
                except Exception as e:
                    errors[j] = _failure_message(e)
        for j, text in got:
            texts[j] = text
            try:
                caches[j % samples].put(keys[j], text)
            except OSError as e:
                log.warning("cannot cache an answer in %s: %s", caches[0].root, e)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    answers = [t or "" for t in texts]
    per_row = 2 * samples
    failed = {j // per_row for j in errors}  # positions in ``order`` with an unanswered answer
    # both answers are judged as answers to the prompt the user wrote
    scored = [j for j in range(len(answers)) if j // per_row not in failed]
    scores = dict(zip(scored, judge_obj.score_batch([(list(rows[order[j // per_row]].prompt), answers[j]) for j in scored])))
    choices = []
    for pos, i in enumerate(order):
        first, second = per_row * pos, per_row * pos + samples  # first sample of each side
        if pos in failed:
            err = next(errors[j] for j in range(first, first + per_row) if j in errors)
            choices.append(
                RewardChoice(i, rows[i].question, rewrites[i], answers[first], answers[second],
                             float("nan"), float("nan"), kept=False, error=f"row {i}: target failed: {err}")
            )
            continue
        rs0 = [float(scores[j]) for j in range(first, second)]
        rs1 = [float(scores[j]) for j in range(second, second + samples)]
        r0, r1 = sum(rs0) / samples, sum(rs1) / samples
        choices.append(
            RewardChoice(
                index=i,
                prompt=rows[i].question,
                rewrite=rewrites[i],
                answer=answers[first],
                rewritten_answer=answers[second],
                reward=r0,
                rewritten_reward=r1,
                kept=r1 - r0 > margin,
                rewards=rs0,
                rewritten_rewards=rs1,
            )
        )
    return choices


def build_rewriter_data(
    pairs: "Iterable[PreferencePair | dict[str, Any]] | str | os.PathLike[str]",
    teacher: "LLM | str | None" = None,
    *,
    cache_dir: "str | os.PathLike[str] | None" = None,
    max_concurrency: int = 8,
    progress: bool = True,
    teacher_temperature: float = 0.7,
    teacher_max_tokens: int = 1024,
    filter_given: bool = False,
    template: "str | Template" = "bpo",
    judge: Any = None,
    target: "LLM | str | None" = None,
    select_max_tokens: int = 128,
    select_margin: float = 0.0,
    select_samples: int = 1,
    select_temperature: float | None = None,
    choices_out: "list[RewardChoice] | None" = None,
) -> "tuple[list[SFTExample], RewriterDataReport]":
    """Training examples for the rewriter: source, the last user message rendered with ``template`` (the
    text the trained model will be prompted with); target, the optimized prompt.

    Rows with an ``optimized_prompt`` are used as they are (the published BPO data keeps some unchanged
    and some long rewrites on purpose; ``filter_given=True`` applies the filters to them too). For the
    others, the ``teacher`` compares ``chosen`` with ``rejected`` and writes a critique and an optimized
    prompt (BPO's procedure, :func:`teacher_prompt`); its answers go through :func:`bpo_filter`.

    Teacher calls run ``max_concurrency`` at a time and are cached on disk under ``cache_dir`` (default:
    ``<alignware cache>/teacher``), keyed by a hash of the teacher's model name and the prompt, so a rerun
    makes no calls. A failed or unparseable teacher answer skips that row and is counted, never raised.

    With a ``judge`` (a reward model), only the rewrites that raise the reward of the ``target`` model's
    answer (default: the embedded model) by more than ``select_margin`` are kept (:func:`select_by_reward`;
    ``select_samples`` answers per side at ``select_temperature``, mean rewards compared); pass a list as
    ``choices_out`` to receive every judged row.

    Returns:
        ``(examples, report)``; examples keep the order of ``pairs``.
    """
    from .sft import SFTExample
    from .templates import get_template

    tmpl = get_template(template)
    if tmpl.fields != ("prompt",):
        raise InputError(f"template {tmpl.name!r} takes fields {list(tmpl.fields)}; a rewriter template takes 'prompt'")
    rows = _as_pairs(pairs)
    report = RewriterDataReport(total=len(rows))
    if max_concurrency < 1:
        raise InputError(f"max_concurrency must be at least 1, got {max_concurrency!r}")
    targets: dict[int, str] = {}
    need: list[int] = []
    for i, row in enumerate(rows):
        if row.optimized_prompt and row.optimized_prompt.strip():
            reason = bpo_filter(row.question, row.optimized_prompt, row.chosen) if filter_given else None
            if reason:
                report.filtered[reason] += 1
            else:
                targets[i] = row.optimized_prompt.strip()
                report.from_data += 1
        elif teacher is None:
            report.no_target += 1
        else:
            need.append(i)

    if need:
        assert teacher is not None
        llm = _resolve_llm(teacher)
        model_name = f"{_cache_identity(teacher, llm)}|temperature={teacher_temperature}|max_tokens={teacher_max_tokens}"
        if cache_dir is None:
            from middleware.models import cache_dir as _cache_root

            teacher_dir = _cache_root() / "teacher"
        else:
            teacher_dir = Path(cache_dir)
        cache = _TextCache(teacher_dir, str(model_name))
        lock = threading.Lock()

        def ask(i: int) -> tuple[int, str | None, str | None]:
            prompt = teacher_prompt(rows[i])
            cached = cache.get(prompt)
            if cached is not None:
                with lock:
                    report.cache_hits += 1
                return i, cached, None
            req = ChatRequest(
                messages=[Message(role="user", content=prompt)],
                temperature=teacher_temperature,
                max_tokens=teacher_max_tokens,
            )
            with lock:
                report.teacher_calls += 1
            try:
                text = llm.complete(req).text
            except Exception as e:  # any backend failure skips the row
                return i, None, f"row {i}: teacher call failed: {_failure_message(e)}"
            try:
                parse_teacher_output(text)
            except ValueError as e:
                return i, None, f"row {i}: unusable teacher answer: {e}"
            try:
                cache.put(prompt, text)
            except OSError as e:
                log.warning("cannot cache a teacher answer in %s: %s", cache.root, e)
            return i, text, None

        bar = None
        if progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(need), desc="teacher", unit="pair")
            except ImportError:  # pragma: no cover
                bar = None
        answers: dict[int, str] = {}
        with ThreadPoolExecutor(max_workers=min(max_concurrency, len(need)), thread_name_prefix="alignware-teacher") as ex:
            for fut in as_completed([ex.submit(ask, i) for i in need]):
                i, text, err = fut.result()
                if err is not None:
                    report.teacher_failures += 1
                    report.failures.append(err)
                else:
                    assert text is not None
                    answers[i] = text
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        report.failures.sort(key=lambda s: int(s.split()[1].rstrip(":")))
        for i in sorted(answers):
            _, optimized = parse_teacher_output(answers[i])
            reason = bpo_filter(rows[i].question, optimized, rows[i].chosen)
            if reason:
                report.filtered[reason] += 1
                continue
            targets[i] = optimized
            report.from_teacher += 1

    if judge is not None and targets:
        choices = select_by_reward(
            rows,
            targets,
            target if target is not None else "embedded",
            judge,
            max_tokens=select_max_tokens,
            margin=select_margin,
            samples=select_samples,
            temperature=select_temperature,
            cache_dir=cache_dir,
            progress=progress,
        )
        judged = [c for c in choices if c.error is None]
        report.selection_judged = len(judged)
        report.selection_dropped = sum(not c.kept for c in judged)
        report.selection_failures = len(choices) - len(judged)
        report.failures.extend(c.error for c in choices if c.error is not None)
        report.selection_mean_gain = sum(c.gain for c in judged) / len(judged) if judged else None
        for c in choices:
            if not c.kept:
                del targets[c.index]
        if choices_out is not None:
            choices_out.extend(choices)
    examples = [SFTExample(source=tmpl.render(prompt=rows[i].question), target=targets[i]) for i in sorted(targets)]
    report.kept = len(examples)
    return examples, report


# -- command line -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """``alignware train rewriter`` arguments: data, teacher, and the SFT flags."""
    from .sft import add_train_args

    p = argparse.ArgumentParser(
        prog="alignware train rewriter",
        description="Train a BPO prompt rewriter (a LoRA adapter) from preference pairs.",
    )
    p.add_argument("--data", required=True, help="preference pairs (JSONL); rows may carry optimized_prompt")
    p.add_argument("--out", required=True, help="output folder for the adapter and its checkpoints")
    p.add_argument(
        "--teacher",
        default=None,
        help="model that writes optimized prompts for rows without one (a litellm model string, a local "
        "model folder, or 'embedded'); without it those rows are skipped",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where teacher answers (and --judge's target answers) are cached "
        "(default: <alignware cache>/teacher and <alignware cache>/answers)",
    )
    p.add_argument("--max-concurrency", type=int, default=8, help="teacher calls in flight at once")
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    p.add_argument("--filter-given", action="store_true", help="apply BPO's filters to optimized prompts found in the data too")
    p.add_argument(
        "--judge",
        default=None,
        help="reward model folder: keep only the rewrites that raise the reward of the target model's answer "
        "(both answers generated, judged against the original prompt); every judged row goes to OUT/selection.jsonl",
    )
    p.add_argument("--target", default="embedded", help="the model the rewriter will serve, for --judge (default: embedded)")
    p.add_argument("--select-max-tokens", type=int, default=128, help="answer length for --judge (default 128)")
    p.add_argument("--select-margin", type=float, default=0.0, help="reward gain a rewrite needs to be kept (default 0)")
    p.add_argument(
        "--select-samples", type=int, default=1, metavar="K",
        help="answers per side for --judge, compared by mean reward (default 1; more than 1 samples at --select-temperature)",
    )
    p.add_argument(
        "--select-temperature", type=float, default=None,
        help="the target's sampling temperature for --judge (default: greedy with 1 sample, 0.7 with more)",
    )
    p.add_argument("--data-only", action="store_true", help="build the training examples, write them to OUT/rewriter_data.jsonl, and stop")
    add_train_args(p)
    return p


def train_main(argv: Sequence[str]) -> int:
    """``alignware train rewriter --data PAIRS --out DIR [--teacher MODEL] [SFT flags]``."""
    from middleware.training import set_threads

    from .sft import config_from_args, train_sft

    args = build_parser().parse_args(list(argv))
    config = config_from_args(args, kind="rewriter")
    pairs = load_pairs(args.data, limit=args.limit)
    set_threads(args.threads)  # --judge generates answers before training starts
    choices: list[RewardChoice] = []
    examples, report = build_rewriter_data(
        pairs,
        args.teacher,
        cache_dir=args.cache_dir,
        max_concurrency=args.max_concurrency,
        progress=not args.quiet and sys.stderr.isatty(),
        filter_given=args.filter_given,
        template=config.template,
        judge=args.judge,
        target=args.target,
        select_max_tokens=args.select_max_tokens,
        select_margin=args.select_margin,
        select_samples=args.select_samples,
        select_temperature=args.select_temperature if args.select_temperature is not None or args.select_samples == 1 else 0.7,
        choices_out=choices,
    )
    print(report.summary())
    out = Path(args.out)
    if choices:
        out.mkdir(parents=True, exist_ok=True)
        with (out / "selection.jsonl").open("w", encoding="utf-8") as f:
            for c in choices:
                f.write(json.dumps(dict(asdict(c), gain=c.gain), ensure_ascii=False) + "\n")
    if not examples:
        raise InputError(f"{args.data}: no training examples (see the report above)")
    if args.data_only:
        out.mkdir(parents=True, exist_ok=True)
        with (out / "rewriter_data.jsonl").open("w", encoding="utf-8") as f:
            for ex in examples:
                f.write(json.dumps({"source": ex.source, "target": ex.target}, ensure_ascii=False) + "\n")
        print(f"wrote {len(examples)} examples to {out / 'rewriter_data.jsonl'}")
        return 0
    result = train_sft(examples, config, out, resume=args.resume, progress=not args.quiet)
    print(_result_line(result))
    return 130 if result.interrupted else 0


def _result_line(result: Any) -> str:
    """One line about a finished SFT run."""

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    speed = ""
    if result.train_seconds:
        speed = (
            f"; {result.tokens_per_second:.1f} target tok/s ({result.total_tokens_per_second:.1f} tok/s in all) "
            f"over {result.train_seconds:.0f} s of training"
        )
    line = (
        f"trained {result.steps} steps; held-out loss {f(result.eval_loss_untrained)} -> {f(result.eval_loss_final)}"
        f"{speed}; adapter in {result.out_dir}"
    )
    if result.steps < result.total_steps:
        why = "interrupted" if result.interrupted else "stopped"
        line += (
            f"\n{why} at step {result.steps} of {result.total_steps}: the adapter holds the weights so far; "
            f"rerun the same command to continue"
        )
    return line
