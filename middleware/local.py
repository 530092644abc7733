"""``LocalBackend``: a transformers causal LM run in-process, with model stages, streaming and batching.

Generation runs the decode loop of ``middleware.decoding`` for ``complete``, ``stream`` and ``batch``:
every request is one row with its own sampling settings, random generator, token budget and stop
strings. Under greedy decoding a batched answer is therefore the same as the answer to the request alone.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Generator, Iterator, Sequence

from .decoding import Decoder, Row, check_sampling
from .errors import AlignwareError, BackendError, InputError
from .llm import LLM, ModelStages
from .models import EMBEDDED_NAME, load_causal_lm
from .stages import attached
from .types import ChatChunk, ChatRequest, ChatResponse, StageTrace, Usage

_DONE = object()


class LocalBackend(LLM):
    """A local transformers chat model that can host model stages (hooks on its layers).

    Args:
        model: a model folder, a ``.gguf`` file, or ``None`` for the embedded SmolLM2-135M-Instruct.
        device: where to load the model (default: CUDA if available, else CPU).
        dtype: torch dtype to load the weights in (default float32).
        max_tokens: the answer length limit for requests that do not set ``max_tokens``.
        system_prompt: a system message prepended to requests that have none.
        model_obj: an already loaded causal LM to use instead of loading one (shares its weights).
        tokenizer: the tokenizer that goes with ``model_obj`` (required with it).
        batch_size: the most requests ``batch`` runs through the model at once.
        lock: a re-entrant lock shared with other users of the same weights (e.g. adapters on one base).

    Temperature ``None`` or ``0`` decodes greedily; otherwise tokens are sampled with the request's
    temperature and ``top_p``, from a generator seeded with ``seed`` when the request sets one.
    ``usage.completion_tokens`` counts every token the model produced, the closing EOS included.
    Calls from several threads take turns on the model (``complete`` and ``batch`` whole, a stream one
    token at a time). A failure inside generation (a hook that raises, running out of memory) is
    raised as ``BackendError``; a request the backend cannot run (a bad temperature or seed, a
    conversation the chat template rejects) as ``InputError``.

    OpenAI request fields (what the server answers; ``check_request`` does the refusing):

    | field | here |
    | --- | --- |
    | ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed`` | honoured |
    | ``developer`` messages | honoured: rendered as ``system`` messages by the chat template |
    | ``user``, ``parallel_tool_calls`` | accepted, no effect (``user`` is in ``metadata`` for stages) |
    | ``n`` > 1, ``logprobs``, ``top_logprobs`` > 0, ``response_format`` other than text, ``tools``, ``tool_choice`` other than ``none``/``auto``, ``frequency_penalty``/``presence_penalty`` ≠ 0, ``logit_bias`` | refused: 400 naming the field |
    | tool messages, an assistant's ``tool_calls`` | refused: 400 naming ``messages[i].role`` / ``messages[i].tool_calls`` |
    | non-text content parts (images, audio) | refused: 400 naming ``messages[i].content[j]`` |
    """

    supports_model_stages = True

    def __init__(
        self,
        model: "str | Path | None" = None,
        *,
        device: Any = None,
        dtype: Any = None,
        max_tokens: int = 256,
        system_prompt: str | None = None,
        model_obj: Any = None,
        tokenizer: Any = None,
        batch_size: int = 16,
        lock: "threading.RLock | None" = None,
    ) -> None:
        if max_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, got {max_tokens!r}")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size!r}")
        if model_obj is not None or tokenizer is not None:
            if model_obj is None or tokenizer is None:
                raise InputError("model_obj and tokenizer go together: pass both, or neither and a model path")
            if model is not None:
                raise InputError("pass either a model path or model_obj/tokenizer, not both")
            if device is not None or dtype is not None:
                raise InputError("device and dtype apply to loading a model; move model_obj yourself before passing it")
            self.model, self.tokenizer = model_obj, tokenizer
            self.name = Path(str(getattr(model_obj, "name_or_path", "") or "")).name or "local-model"
        else:
            self.model, self.tokenizer = load_causal_lm(model, device=device, dtype=dtype)
            self.name = _model_name(model)
        self.max_tokens = max_tokens
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self._lock = lock if lock is not None else threading.RLock()
        self._decoder = Decoder(self.model, self.tokenizer)

    def __repr__(self) -> str:
        return f"LocalBackend(name={self.name!r}, device={str(self.device)!r})"

    @property
    def device(self) -> Any:
        """The device the model's weights are on."""
        return next(self.model.parameters()).device

    # -- the LLM protocol ---------------------------------------------------------------
    def complete(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> ChatResponse:
        """Answer one request; model stages are attached to the model for the generation only."""
        row = self._row(request, incremental=False)
        traces: list[StageTrace] = []
        with self._lock, attached(model_stages, self.model, request, traces):
            for _ in self._generate([row]):
                pass
        return self._response(row, traces)

    def stream(self, request: ChatRequest, *, model_stages: ModelStages = ()) -> Iterator[ChatChunk]:
        """Yield the answer piece by piece as tokens come, then a closing chunk with usage and trace.

        The model stages are attached once, for the whole stream, but each token is generated with
        the model locked and the stages' hooks in place, and both are taken off again before a chunk is
        handed over: whatever the consumer runs between chunks (a corrector on the same weights, another
        request, on this thread or another) sees the model as it is outside the stream. The stages are
        detached when the stream ends, fails, or its consumer closes it early.
        """
        row = self._row(request, incremental=True)
        traces: list[StageTrace] = []
        steps = self._generate([row])
        stages = contextlib.ExitStack()
        hooks: _StageHooks | None = None
        sent = ""
        try:
            while row.finish is None:
                with self._lock:
                    if hooks is None:
                        hooks = _StageHooks(self.model, watch=bool(model_stages))
                        stages.enter_context(attached(model_stages, self.model, request, traces))
                        hooks.found()
                    else:
                        hooks.show()
                    try:
                        done = next(steps, _DONE) is _DONE
                    finally:
                        hooks.hide()
                if done:
                    break
                safe = row.stream_safe_text()
                if len(safe) > len(sent) and safe.startswith(sent):
                    yield ChatChunk.piece(safe[len(sent) :], self.name)
                    sent = safe
        finally:
            steps.close()
            with self._lock:
                stages.close()
        if len(row.text) > len(sent):
            yield ChatChunk.piece(row.text[len(sent) :], self.name)
        yield ChatChunk(finish_reason=row.finish, model=self.name, usage=self._usage(row), trace=traces)

    def batch(self, requests: Sequence[ChatRequest], *, model_stages: ModelStages = ()) -> list[ChatResponse]:
        """Answer many requests in padded batches; each keeps its own parameters and stop rule.

        Requests for which the same model stages apply (after ``skip_if``) are batched together,
        ``batch_size`` at a time, sorted by prompt length to keep padding small.
        """
        if not requests:
            return []
        rows = [self._row(r, incremental=False) for r in requests]
        groups: dict[tuple[bool, ...], list[int]] = {}
        own: list[list[StageTrace | None]] = []
        for i, req in enumerate(requests):
            skips = [st._skipped(req) for st in model_stages]
            own.append(skips)
            groups.setdefault(tuple(s is None for s in skips), []).append(i)
        traces: list[list[StageTrace]] = [[] for _ in requests]
        for key, members in groups.items():
            active = [st for st, on in zip(model_stages, key) if on]
            members = sorted(members, key=lambda i: len(rows[i].prompt_ids))
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                shared: list[StageTrace] = []
                with self._lock, attached(active, self.model, requests[chunk[0]], shared):
                    for _ in self._generate([rows[i] for i in chunk]):
                        pass
                for i in chunk:
                    it = iter(shared)
                    traces[i] = [t if t is not None else next(it) for t in own[i]]
        return [self._response(row, tr) for row, tr in zip(rows, traces)]

    # -- prompts and parameters ---------------------------------------------------------
    def deterministic(self, request: ChatRequest) -> bool:
        """Greedy decoding (temperature ``None`` or ``0``) gives the same answer every time."""
        return not request.temperature

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The token ids of ``request`` rendered with the tokenizer's chat template."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise InputError(
                f"the tokenizer of {self.name} has no chat template, so chat messages cannot be turned into a "
                "prompt: use a chat/instruct model or set tokenizer.chat_template"
            )
        # ``developer`` is today's name for ``system``: chat templates know only the latter
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in request.messages]
        if self.system_prompt is not None and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except TemplateError as e:
            if type(e) is TemplateError:  # the template's own raise_exception(...)
                raise InputError(f"the model's chat template rejected the conversation: {e}") from e
            raise InputError(f"the chat template of {self.name} cannot be rendered: {type(e).__name__}: {e}") from e
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not ids:
            raise InputError("the chat template rendered an empty prompt")
        return ids

    def _row(self, request: ChatRequest, *, incremental: bool) -> Row:
        self.check_request(request)
        temperature, top_p = request.temperature, request.top_p
        check_sampling(temperature, request.seed, top_p)
        stops = [s for s in (request.stop or []) if s]
        ids = self.prompt_ids(request)
        max_new = request.max_tokens or self.max_tokens
        context = self._decoder.context
        if context:
            room = context - len(ids)
            if room < 1:
                raise InputError(f"the prompt is {len(ids)} tokens long; {self.name} has a context of {context} tokens")
            max_new = min(max_new, room)
        return Row(
            prompt_ids=ids,
            max_new=max_new,
            temperature=temperature,
            top_p=top_p,
            seed=request.seed,
            stops=stops,
            incremental=incremental or bool(stops),
        )

    # -- generation ---------------------------------------------------------------------
    def _generate(self, rows: list[Row]) -> Generator[None, None, None]:
        """Run ``rows`` as one left-padded batch, updating them in place; yield after every token."""
        try:
            yield from self._decoder.run(rows)
        except AlignwareError:
            raise
        except Exception as e:
            raise BackendError(
                f"local generation with {self.name} failed: {type(e).__name__}: {e}", provider_message=str(e)
            ) from e

    # -- results ------------------------------------------------------------------------
    def _usage(self, row: Row) -> Usage:
        n = len(row.prompt_ids)
        return Usage(prompt_tokens=n, completion_tokens=row.generated, total_tokens=n + row.generated)

    def _response(self, row: Row, traces: list[StageTrace]) -> ChatResponse:
        return ChatResponse(
            text=row.text, finish_reason=row.finish or "length", model=self.name, usage=self._usage(row), trace=traces
        )


class _StageHooks:
    """The hooks that model stages registered on a model, taken off between the steps of a stream.

    Built before the stages attach, ``found()`` after: the hooks added in between are the stages'.
    ``hide()`` takes them out of the modules' hook tables and ``show()`` puts them back, so the stages'
    ``attach`` runs once per stream, and whatever state their hooks keep carries on from step to step.
    """

    TABLES = (
        "_forward_pre_hooks",
        "_forward_pre_hooks_with_kwargs",
        "_forward_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_backward_pre_hooks",
        "_backward_hooks",
    )

    def __init__(self, model: Any, *, watch: bool = True) -> None:
        self.model = model
        self.watch = watch  # False: no stages, nothing to look for
        self.before = {(id(m), t): set(d) for m, t, d in self._tables()} if watch else {}
        self.added: list[tuple[dict[Any, Any], list[tuple[Any, Any]]]] = []

    def _tables(self) -> Iterator[tuple[Any, str, dict[Any, Any]]]:
        for module in self.model.modules():
            for table in self.TABLES:
                d = vars(module).get(table)
                if isinstance(d, dict):
                    yield module, table, d

    def found(self) -> None:
        if not self.watch:
            return
        for m, t, d in self._tables():
            old = self.before.get((id(m), t), set())
            new = [(k, v) for k, v in d.items() if k not in old]
            if new:
                self.added.append((d, new))
        self.before = {}

    def hide(self) -> None:
        for d, items in self.added:
            for k, _ in items:
                d.pop(k, None)

    def show(self) -> None:
        for d, items in self.added:
            d.update(items)


def _model_name(model: "str | Path | None") -> str:
    if model is None or str(model) in ("embedded", EMBEDDED_NAME):
        return EMBEDDED_NAME
    p = Path(model).expanduser()
    return p.stem if p.suffix == ".gguf" else (p.resolve().name or str(p))

