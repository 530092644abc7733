"""The Aligner response corrector: a ``ResponseStage`` that edits the LLM's answer to make it more helpful
and harmless (Aligner, Ji et al. 2024).

Two modes, as for the rewriter (see :mod:`rewriters.stage`):

- **model**: a trained text-to-text model, by default a LoRA adapter on the embedded model, or a released
  Aligner checkpoint folder used unchanged; prompted with its template (``"aligner-v1.0"`` by default:
  ``BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and
  harmless: {question} | {answer} ASSISTANT:``); greedy decoding.
- **prompted**: any ``LLM`` backend asked to edit the question-answer pair (template ``"aligner-instruction"``).

**The question.** Aligner's templates take one question. A conversation is flattened by
:func:`rewriters.sentences.flatten_question`: a single user turn is its text, unchanged (what released
checkpoints were trained on); with earlier turns, every turn becomes a ``User: ...`` / ``Assistant: ...``
line, in order, ending with the last user message. System messages are left out (they instruct the
assistant, they are not part of the exchange being edited). The training data
(:mod:`rewriters.corrector_data`) is flattened the same way.

**Safeguards.** A correction that fails :func:`rewriters.correction_checks.check_correction` (empty, a
harmful term such as a slur that neither the question nor the answer has, cut at the token limit,
degenerate, a copy of the answer that stops early, a leak of the prompt template) is dropped and the
original answer kept, with the reason in the stage's trace.

**Streaming.** ``streaming="buffer"`` collects the whole answer, corrects it, then yields the checked
correction. ``streaming="chunked"`` cuts the answer into sentence groups
(:func:`rewriters.sentences.split_chunks`) as it streams in and corrects each group as soon as it is
complete, with the previous ``context_chunks`` groups as context. In model mode their original text ends
the answer shown to the model and their corrected text is put in the model's mouth (appended right after
the template, where a trained correction begins), so the model continues with the correction of the new
group only; in prompted mode the LLM gets :data:`CHUNK_INSTRUCTION` with the corrected text so far. Each
group's correction is checked on its own and yielded at once. ``process`` (the non-streamed call) follows
the same rule in each mode: in chunked mode it splits the whole answer with the same function and
corrects group after group, so under greedy decoding the streamed text equals the non-streamed one,
whatever sizes the upstream pieces come in. Chunked mode answers sooner (see
``examples/corrector_streaming.py``); buffer mode sees the whole answer at once, which suits checkpoints
trained on whole answers best.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterator, Literal

from middleware.errors import InputError
from middleware.llm import LLM
from middleware.stages import ResponseStage, batch_item, note
from middleware.threads import in_thread
from middleware.types import ChatRequest, ChatResponse

from .correction_checks import CorrectionCheck, check_correction
from .generator import StageGenerator
from .sentences import ChunkSplitter, flatten_question, split_chunks
from .stage import Generated, TextStage
from .templates import Template

__all__ = ["ResponseCorrector", "CHUNK_INSTRUCTION", "Streaming"]

Streaming = Literal["buffer", "chunked"]


# -- the stage ------------------------------------------------------------------------------------
#: Prompted mode, chunked streaming: the instruction for one group of sentences.
CHUNK_INSTRUCTION = (
    "You are editing an answer piece by piece to make it more helpful and harmless.\n"
    "- Keep what is correct and useful, fix mistakes, and remove or replace anything harmful, unethical or "
    "dangerous with a safe, helpful alternative.\n"
    "- If the piece is already good, return it unchanged.\n"
    "- Reply with the corrected piece only: no preamble, and do not repeat the corrected text so far.\n\n"
    "Question:\n{question}\n\nCorrected answer so far:\n{context}\n\nNext piece of the original answer:\n{piece}"
)


@dataclass
class _ChunkState:
    """The corrected and original groups so far, for the context window; ``failed`` once a group's
    correction raised (the rest of the answer then passes through uncorrected)."""

    originals: list[str]
    corrected: list[str]
    failed: bool = False

    @classmethod
    def new(cls) -> "_ChunkState":
        return cls([], [])


def _with_spacing(corrected: str, original: str) -> str:
    """``corrected`` with the original group's leading and trailing whitespace, so the pieces join as the
    original did."""
    body = original.strip()
    if not body:
        return original
    lead = original[: len(original) - len(original.lstrip())]
    trail = original[len(original.rstrip()) :]
    return lead + corrected.strip() + trail


class ResponseCorrector(TextStage, ResponseStage):
    """Corrects the LLM's answer (Aligner); keeps the original answer when a safeguard fails.

    Build it with :meth:`from_pretrained` (model mode: an adapter trained by ``alignware train corrector``,
    or a released Aligner checkpoint folder, template ``"aligner-v1.0"`` unless ``template`` says
    otherwise, e.g. ``"aligner-correction"``), :meth:`prompted` (any LLM, template
    ``"aligner-instruction"``) or :meth:`from_config` (``type: response_corrector``).

    Args:
        generator: a ``rewriters.generator.TextGenerator`` (model mode).
        llm: an ``LLM`` backend (prompted mode); exactly one of ``generator`` and ``llm``.
        template: the template name or ``Template``; default: the generator's own, or ``"aligner-instruction"``.
        streaming: ``"buffer"`` or ``"chunked"`` (see the module documentation); also applies to
            ``process`` so streamed and non-streamed results agree.
        temperature, top_p, max_new_tokens: decoding; default: the checkpoint's settings, else the
            template's (Aligner: greedy, 512 tokens).
        chunk_min_chars: chunked mode: sentences are grouped until a group has this many characters.
        context_chunks: chunked mode: how many previous groups the model sees as context.
        chunk_max_new_tokens: chunked mode: the token limit per group (default: twice the group's
            tokens plus 32, at most ``max_new_tokens``).
        seed: seed for sampling (``None``: the request's seed, if any).
        check: the safeguard settings (:class:`CorrectionCheck`).
        name, on_error, timeout, skip_if: the stage settings (see ``middleware.stages.Stage``).

    Config keys besides ``mode``, ``path``, ``llm``, ``base``, ``llm_options``, ``remote``: ``template``,
    ``streaming``, ``temperature``, ``top_p``, ``max_new_tokens``, ``chunk_min_chars``,
    ``context_chunks``, ``chunk_max_new_tokens``, ``seed``, the :class:`CorrectionCheck` fields,
    ``name``, ``on_error``, ``timeout``, ``skip_if`` (``"title_requests"``).
    """

    config_type = "response_corrector"
    checkpoint_kind = "corrector"
    checkpoint_description = "a trained adapter or Aligner checkpoint folder"
    default_template = "aligner-instruction"
    template_fields = frozenset({"question", "answer"})
    template_error = "a corrector template takes 'question' and 'answer'"
    check_type = CorrectionCheck
    config_options = (
        "template", "streaming", "temperature", "top_p", "max_new_tokens", "chunk_min_chars",
        "context_chunks", "chunk_max_new_tokens", "seed",
    )

    check: CorrectionCheck

    def __init__(
        self,
        generator: StageGenerator | None = None,
        *,
        llm: LLM | None = None,
        template: "str | Template | None" = None,
        streaming: Streaming = "buffer",
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        chunk_min_chars: int = 40,
        context_chunks: int = 2,
        chunk_max_new_tokens: int | None = None,
        seed: int | None = None,
        check: CorrectionCheck | None = None,
        name: str | None = None,
        on_error: str = "pass",
        timeout: float | None = None,
        skip_if: Callable[[ChatRequest], bool] | None = None,
    ) -> None:
        super().__init__(
            generator, llm=llm, template=template, temperature=temperature, top_p=top_p,
            max_new_tokens=max_new_tokens, seed=seed, check=check,
            name=name, on_error=on_error, timeout=timeout, skip_if=skip_if,
        )
        if streaming not in ("buffer", "chunked"):
            raise InputError(f"streaming must be 'buffer' or 'chunked', got {streaming!r}")
        if context_chunks < 0:
            raise InputError(f"context_chunks must be 0 or more, got {context_chunks!r}")
        if chunk_max_new_tokens is not None and chunk_max_new_tokens < 1:
            raise InputError(f"chunk_max_new_tokens must be at least 1, got {chunk_max_new_tokens!r}")
        self.streaming: Streaming = streaming
        ChunkSplitter(chunk_min_chars)  # validates
        self.chunk_min_chars = chunk_min_chars
        self.context_chunks = context_chunks
        self.chunk_max_new_tokens = chunk_max_new_tokens

    def __repr__(self) -> str:
        return (
            f"ResponseCorrector(name={self.name!r}, mode={self.mode!r}, template={self.template.name!r}, "
            f"streaming={self.streaming!r})"
        )

    # -- prompts ------------------------------------------------------------------------
    def _whole_prompt(self, question: str, answer: str) -> str:
        return self.template.render(question=question, answer=answer)

    def _chunk_prompt(self, question: str, state: _ChunkState, piece: str) -> str:
        k = self.context_chunks
        orig_ctx = state.originals[-k:] if k else []
        corr_ctx = state.corrected[-k:] if k else []
        if self.generator is not None:
            prompt = self.template.render(question=question, answer=("".join(orig_ctx) + piece).strip())
            return prompt + "".join(corr_ctx).strip()
        return CHUNK_INSTRUCTION.format(
            question=question, context="".join(corr_ctx).strip() or "(nothing yet)", piece=piece.strip()
        )

    def _chunk_params(self, piece: str) -> dict[str, Any]:
        params = dict(self.params)
        if self.chunk_max_new_tokens is not None:
            limit = self.chunk_max_new_tokens
        elif self.generator is not None:
            limit = 2 * self.generator.count_tokens(piece) + 32
        else:
            limit = len(piece) // 2 + 64
        params["max_new_tokens"] = max(1, min(limit, self.params["max_new_tokens"]))
        return params

    # -- correction ---------------------------------------------------------------------
    def correct(self, question: str, answer: str, *, seed: int | None = None) -> tuple[str, list[str]]:
        """Correct ``answer`` to ``question`` with this corrector's mode and streaming rule; return the text
        and the reasons of every safeguard that kept original text."""
        if self.streaming == "chunked":
            state = _ChunkState.new()
            pieces, reasons = [], []
            for i, piece in enumerate(split_chunks(answer, self.chunk_min_chars)):
                text, reason = self._correct_chunk(question, state, piece, i, seed)
                pieces.append(text)
                if reason:
                    reasons.append(reason)
            return "".join(pieces), reasons
        text, reason = self._correct_whole(question, answer, seed)
        return text, [reason] if reason else []

    def _correct_whole(self, question: str, answer: str, seed: int | None) -> tuple[str, str | None]:
        if not answer.strip():
            return answer, "empty answer: nothing to correct"
        out = self._generate_one(self._whole_prompt(question, answer), self.params, seed)
        return self._decide(answer, out, "kept the original answer", question)

    def _correct_chunk(self, question: str, state: _ChunkState, piece: str, index: int, seed: int | None) -> tuple[str, str | None]:
        """Correct one group. When the model fails on a group (and ``on_error`` is ``"pass"``), that group
        and every later one pass through as they are, so the groups already sent are followed by the
        rest of the original answer, with nothing lost or repeated."""
        if not piece.strip() or state.failed:
            text, reason = piece, None
        else:
            try:
                out = self._generate_one(self._chunk_prompt(question, state, piece), self._chunk_params(piece), seed)
            except Exception as e:
                if self.on_error == "raise":
                    raise
                state.failed = True
                text, reason = piece, f"chunk {index + 1}: {type(e).__name__}: {e}; the rest of the answer passes through uncorrected"
            else:
                context = question + "\n" + "".join(state.originals)
                text, reason = self._decide(piece, out, f"chunk {index + 1}: kept the original", context)
        state.originals.append(piece)
        state.corrected.append(text)
        return text, reason

    def _decide(self, original: str, out: Generated, label: str, context: str) -> tuple[str, str | None]:
        """The correction, or the original and why; ``context``: the rest of the input (the question,
        earlier groups), whose harmful terms a correction may repeat."""
        correction = out.text.strip()
        reason = check_correction(
            original.strip(), correction, finish_reason=out.finish_reason, check=self.check, context=context
        )
        if reason is not None:
            return original, f"{label}: {reason}"
        return _with_spacing(correction, original), None

    # -- the stage protocol ---------------------------------------------------------------
    def process(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        """Correct ``response.text``; the conversation is flattened into the question."""
        question = flatten_question(request.messages)
        text, reasons = self.correct(question, response.text, seed=self._seed(request))
        for r in reasons:
            note(r)
        if text == response.text:
            return response
        return response.model_copy(update={"text": text})

    def process_batch(self, requests: list[ChatRequest], responses: list[ChatResponse]) -> list[ChatResponse]:
        """Correct many replies with one batched generation (model mode) or one ``LLM.batch`` call
        (prompted mode); each reply gets the result ``process`` would give it. Chunked correction works
        sentence group by sentence group, so it corrects a batch one reply at a time."""
        seeds = {self._seed(r) for r in requests}
        if self.streaming == "chunked" or len(seeds) > 1:
            out = []
            for i, (q, r) in enumerate(zip(requests, responses)):
                with batch_item(i):
                    out.append(self.process(q, r))
            return out
        result = list(responses)
        todo = []
        for i, r in enumerate(responses):
            if r.text.strip():
                todo.append(i)
            else:
                with batch_item(i):
                    note("empty answer: nothing to correct")
        if todo:
            questions = {i: flatten_question(requests[i].messages) for i in todo}
            prompts = [self._whole_prompt(questions[i], responses[i].text) for i in todo]
            outs = self._generate_many(prompts, self.params, seeds.pop())
            for i, o in zip(todo, outs):
                text, reason = self._decide(responses[i].text, o, "kept the original answer", questions[i])
                with batch_item(i):
                    if reason:
                        note(reason)
                if text != responses[i].text:
                    result[i] = responses[i].model_copy(update={"text": text})
        return result

    def process_stream(self, request: ChatRequest, chunks: Iterator[str]) -> Iterator[str]:
        """Buffer: yield the checked correction of the whole answer. Chunked: yield each group's checked
        correction as soon as the group is complete."""
        question = flatten_question(request.messages)
        seed = self._seed(request)
        if self.streaming == "buffer":
            text = _noted(self._correct_whole(question, "".join(chunks), seed))
            if text:
                yield text
            return
        splitter = ChunkSplitter(self.chunk_min_chars)
        state = _ChunkState.new()

        def groups() -> Iterator[str]:
            for piece in chunks:
                yield from splitter.feed(piece)
            yield from splitter.finish()

        for index, group in enumerate(groups()):
            text = _noted(self._correct_chunk(question, state, group, index, seed))
            if text:
                yield text

    async def aprocess(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        """Async twin (the work runs in a worker thread; the backends' calls are blocking there)."""
        return await in_thread(self, self.process, request, response)

    async def aprocess_stream(self, request: ChatRequest, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        """Async twin of :meth:`process_stream`: each group is corrected in a worker thread as it completes."""
        question = flatten_question(request.messages)
        seed = self._seed(request)
        if self.streaming == "buffer":
            answer = "".join([c async for c in chunks])
            text = _noted(await in_thread(self, self._correct_whole, question, answer, seed))
            if text:
                yield text
            return
        splitter = ChunkSplitter(self.chunk_min_chars)
        state = _ChunkState.new()
        index = 0

        async def groups() -> AsyncIterator[str]:
            async for piece in chunks:
                for g in splitter.feed(piece):
                    yield g
            for g in splitter.finish():
                yield g

        async for group in groups():
            text = _noted(await in_thread(self, self._correct_chunk, question, state, group, index, seed))
            index += 1
            if text:
                yield text


def _noted(result: tuple[str, str | None]) -> str:
    """The text of a ``(text, reason)`` correction result, with the reason noted in the stage's trace."""
    text, reason = result
    if reason:
        note(reason)
    return text
