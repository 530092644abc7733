"""The Aligner response corrector: a ``ResponseStage`` that edits the LLM's answer to make it more helpful
and harmless (Aligner, Ji et al. 2024), with its training data builder and command line.

Two modes, as for the rewriter:

- **model**: a trained text-to-text model, by default a LoRA adapter on the embedded model, or a released
  Aligner checkpoint folder used unchanged; prompted with its template (``"aligner-v1.0"`` by default:
  ``BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and
  harmless: {question} | {answer} ASSISTANT:``); greedy decoding.
- **prompted**: any ``LLM`` backend asked to edit the question-answer pair (template ``"aligner-instruction"``).

**The question.** Aligner's templates take one question. A conversation is flattened by
:func:`flatten_question`: a single user turn is its text, unchanged (what released checkpoints were
trained on); with earlier turns, every turn becomes a ``User: ...`` / ``Assistant: ...`` line, in order,
ending with the last user message. System messages are left out (they instruct the assistant, they are
not part of the exchange being edited). The training data is flattened the same way.

**Safeguards.** A correction that fails :func:`check_correction` (empty, cut at the token limit,
degenerate, a copy of the answer that stops early, a leak of the prompt template) is dropped and the
original answer kept, with the reason in the stage's trace.

**Streaming.** ``streaming="buffer"`` collects the whole answer, corrects it, then yields the checked
correction. ``streaming="chunked"`` cuts the answer into sentence groups (:func:`split_chunks`) as it
streams in and corrects each group as soon as it is complete, with the previous ``context_chunks``
groups as context. In model mode their original text ends the answer shown to the model and their
corrected text is put in the model's mouth (appended right after the template, where a trained
correction begins), so the model continues with the correction of the new group only; in prompted mode
the LLM gets :data:`CHUNK_INSTRUCTION` with the corrected text so far. Each group's correction is checked
on its own and yielded at once. ``process`` (the
non-streamed call) follows the same rule in each mode: in chunked mode it splits the whole answer with
the same function and corrects group after group, so under greedy decoding the streamed text equals the
non-streamed one, whatever sizes the upstream pieces come in. Chunked mode answers sooner (see
``examples/corrector_streaming.py``); buffer mode sees the whole answer at once, which suits checkpoints
trained on whole answers best.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Iterator, Literal, Sequence

from middleware.errors import InputError
from middleware.llm import LLM
from middleware.stages import ResponseStage, batch_item, note
from middleware.types import ChatRequest, ChatResponse, Message, PreferencePair, load_pairs

from .rewriter import (
    _as_pairs,
    _deterministic,
    _generation_defaults,
    _llm_request,
    _Out,
    _resolve_llm,
    _result_line,
    _run_generator,
    _run_llm,
    _stage_from_config,
    _stage_template,
)

if TYPE_CHECKING:  # pragma: no cover
    from .generator import TextGenerator
    from .sft import SFTExample
    from .templates import Template

__all__ = [
    "ResponseCorrector",
    "CorrectionCheck",
    "check_correction",
    "degeneration",
    "flatten_question",
    "split_sentences",
    "split_chunks",
    "ChunkSplitter",
    "build_corrector_data",
    "CHUNK_INSTRUCTION",
    "train_main",
]

Streaming = Literal["buffer", "chunked"]


# -- the question ---------------------------------------------------------------------------------
def flatten_question(messages: Sequence[Message | dict[str, Any]]) -> str:
    """The conversation as Aligner's one ``question``.

    One user turn (system messages aside): its text, unchanged. Several turns: ``User: ...`` and
    ``Assistant: ...`` lines joined by newlines, ending with the last user message. System messages are
    left out.
    """
    msgs = [m if isinstance(m, Message) else Message.model_validate(m) for m in messages]
    turns = [m for m in msgs if m.role != "system"]
    if not turns:
        raise InputError("the conversation has no user message to correct an answer to")
    if len(turns) == 1:
        return turns[0].content
    return "\n".join(f"{'User' if m.role == 'user' else 'Assistant'}: {m.content}" for m in turns)


# -- segmentation ---------------------------------------------------------------------------------
#: A sentence ends at ``.``/``!``/``?``/``…`` (then closing quotes or brackets, or markdown emphasis)
#: followed by whitespace, or at a line break; the whitespace after it belongs to it.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]*_]*\s+|\n\s*")
_ABBREVIATIONS = frozenset("e.g i.e etc vs mr mrs ms dr prof st jr sr no fig approx cf al dept inc ltd".split())
_LAST_WORD = re.compile(r"(?:^|[^\w.])((?:[A-Za-z]\.)*[A-Za-z]+|\d{1,3})$")


def _after_abbreviation(text: str, dot: int) -> bool:
    """Whether the single ``.`` at index ``dot`` closes an abbreviation ("e.g.", "Dr.") or a list number ("2.")."""
    m = _LAST_WORD.search(text, 0, dot)
    return m is not None and (m.group(1).isdigit() or m.group(1).lower() in _ABBREVIATIONS)


def split_sentences(text: str) -> list[str]:
    """Cut ``text`` into sentences, each with the whitespace after it; joined, they give ``text`` back.

    A boundary is a sentence end (``.``, ``!``, ``?``, ``…``, then closing quotes, brackets or markdown
    emphasis) followed by whitespace, or a line break. A ``.`` after an abbreviation ("e.g.", "Dr.") or
    after a number of up to three digits ("2. Mix the flour") on the same line is no boundary. The last piece may be unfinished.
    """
    out: list[str] = []
    start = pos = 0
    while True:
        m = _BOUNDARY.search(text, pos)
        if m is None:
            break
        found = m.group(0)
        if found[0] == "." and found[1:2] != "." and "\n" not in found and _after_abbreviation(text, m.start()):
            pos = m.end()
            continue
        out.append(text[start : m.end()])
        start = pos = m.end()
    if start < len(text):
        out.append(text[start:])
    return out


class ChunkSplitter:
    """Incremental :func:`split_chunks`: feed text pieces of any size, get each group as soon as it is
    complete; ``finish()`` returns the rest. The groups do not depend on how the text was cut into pieces.

    A sentence is complete once the first character of the next one has arrived (until then the
    whitespace after it might still grow). Complete sentences are grouped until a group has
    ``min_chars`` characters (not counting surrounding whitespace).
    """

    def __init__(self, min_chars: int = 40) -> None:
        if min_chars < 1:
            raise InputError(f"min_chars must be at least 1, got {min_chars!r}")
        self.min_chars = min_chars
        self._tail = ""
        self._group = ""

    def feed(self, piece: str) -> list[str]:
        """Add ``piece``; return the groups it completed."""
        if not piece:
            return []
        sentences = split_sentences(self._tail + piece)
        self._tail = sentences.pop()
        done: list[str] = []
        for s in sentences:
            self._group += s
            if len(self._group.strip()) >= self.min_chars:
                done.append(self._group)
                self._group = ""
        return done

    def finish(self) -> list[str]:
        """The remaining text as the last group (none when nothing is left)."""
        rest = self._group + self._tail
        self._group = self._tail = ""
        return [rest] if rest else []


def split_chunks(text: str, min_chars: int = 40) -> list[str]:
    """The groups of sentences chunked correction works on; joined, they give ``text`` back."""
    sp = ChunkSplitter(min_chars)
    return sp.feed(text) + sp.finish()


# -- safeguards -----------------------------------------------------------------------------------
_WORD_RE = re.compile(r"\S+")
#: Pieces of the prompt templates a correction must not contain: the wrapper's turn markers as upper-case
#: words (with or without the colon: a model that leaks them often writes "... ASSISTANT." or "USER"), and
#: the ``##`` section headers.
_TEMPLATE_MARKERS = re.compile(r"BEGINNING OF CONVERSATION|##\s*(?:Question|Answer|Correction)\s*:|\b(?:ASSISTANT|USER)\b")
_LOOP = re.compile(r"(.{4,80}?)\1{3,}", re.DOTALL)


@dataclass(frozen=True)
class CorrectionCheck:
    """The safeguard settings of a corrector (see :func:`check_correction`)."""

    reject_truncated: bool = True
    check_degenerate: bool = True
    ngram: int = 6
    max_ngram_repeats: int = 4
    min_distinct_ratio: float = 0.4
    distinct_min_words: int = 60
    max_line_repeats: int = 3
    check_dropped_tail: bool = True
    dropped_tail_ratio: float = 0.5
    check_template_leak: bool = True


def _norm_words(text: str) -> list[str]:
    return [w.lower().strip(".,;:!?\"'()[]*_") for w in _WORD_RE.findall(text)]


def degeneration(text: str, reference: str = "", check: CorrectionCheck = CorrectionCheck()) -> str | None:
    """Why ``text`` looks like a generation loop, or ``None``. Repetition already in ``reference`` (the
    original answer) does not count.

    - a line (3+ characters) that occurs ``max_line_repeats`` times or more;
    - a piece of 4 to 80 characters repeated 4 times or more back to back;
    - a run of ``ngram`` words that occurs ``max_ngram_repeats`` times or more;
    - for ``distinct_min_words`` words or more: fewer than ``min_distinct_ratio`` of its 4-word runs distinct.
    """
    lines = Counter(ln.strip().lower() for ln in text.splitlines() if len(ln.strip()) >= 3)
    ref_lines = Counter(ln.strip().lower() for ln in reference.splitlines() if len(ln.strip()) >= 3)
    for line, n in lines.most_common(3):
        if n >= check.max_line_repeats and n > ref_lines.get(line, 0):
            return f"degenerate: the line {line[:40]!r} repeats {n} times"
    m = _LOOP.search(text)
    if m and m.group(0) not in reference and m.group(1).strip():
        unit = m.group(1)
        return f"degenerate: {unit[:30]!r} repeats {len(m.group(0)) // len(unit)} times in a row"
    words = _norm_words(text)
    n = check.ngram
    if len(words) >= n * check.max_ngram_repeats:
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        gram, count = grams.most_common(1)[0]
        if count >= check.max_ngram_repeats:
            ref = _norm_words(reference)
            ref_count = sum(1 for i in range(len(ref) - n + 1) if tuple(ref[i : i + n]) == gram)
            if count > ref_count:
                return f"degenerate: the phrase {' '.join(gram)!r} repeats {count} times"
    if len(words) >= check.distinct_min_words:
        quads = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
        ratio = len(set(quads)) / len(quads)
        if ratio < check.min_distinct_ratio:
            ref = _norm_words(reference)
            ref_quads = [tuple(ref[i : i + 4]) for i in range(len(ref) - 3)]
            ref_ratio = len(set(ref_quads)) / len(ref_quads) if ref_quads else 1.0
            if ratio < ref_ratio:
                return f"degenerate: only {ratio:.0%} of its 4-word runs are distinct"
    return None


def check_correction(
    original: str, correction: str, *, finish_reason: str = "stop", check: CorrectionCheck = CorrectionCheck()
) -> str | None:
    """Why ``correction`` must not replace ``original``, or ``None`` when it may.

    Rules, in order:

    1. ``empty``: nothing but whitespace.
    2. ``truncated``: the generation stopped at the token limit (``finish_reason == "length"``): its end
       is missing, and a cut answer is worse than the original.
    3. ``template leak``: it contains a marker of the prompt template (``ASSISTANT:``, ``##Question:``...)
       that the original does not.
    4. ``degenerate``: a repetition loop (:func:`degeneration`).
    5. ``dropped tail``: it is a beginning of the original, less than ``dropped_tail_ratio`` of its
       length (the model copied the answer and stopped early). A much shorter correction that is *not*
       a copy, such as a refusal replacing a harmful answer, is allowed.
    """
    if not correction.strip():
        return "empty correction"
    if check.reject_truncated and finish_reason == "length":
        return "correction cut off at the token limit"
    if check.check_template_leak:
        in_original = {m.group(0) for m in _TEMPLATE_MARKERS.finditer(original)}
        for m in _TEMPLATE_MARKERS.finditer(correction):
            if m.group(0) not in in_original:
                return f"correction contains the prompt template marker {m.group(0)!r}"
    if check.check_degenerate:
        reason = degeneration(correction, original, check)
        if reason:
            return reason
    if check.check_dropped_tail:
        c, o = " ".join(_norm_words(correction)), " ".join(_norm_words(original))
        if c and o.startswith(c) and len(c) < check.dropped_tail_ratio * len(o):
            return f"correction drops the end of the answer (a copy of its first {len(c) * 100 // max(1, len(o))}%)"
    return None


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


class ResponseCorrector(ResponseStage):
    """Corrects the LLM's answer (Aligner); keeps the original answer when a safeguard fails.

    Build it with :meth:`from_pretrained` (model mode), :meth:`prompted` (any LLM) or :meth:`from_config`.

    Args:
        generator: a ``rewriters.engine.TextGenerator`` (model mode).
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
    """

    def __init__(
        self,
        generator: "TextGenerator | None" = None,
        *,
        llm: "LLM | None" = None,
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
        super().__init__(name=name, on_error=on_error, timeout=timeout, skip_if=skip_if)  # type: ignore[arg-type]
        if (generator is None) == (llm is None):
            raise InputError("ResponseCorrector needs exactly one of generator (model mode) or llm (prompted mode)")
        if streaming not in ("buffer", "chunked"):
            raise InputError(f"streaming must be 'buffer' or 'chunked', got {streaming!r}")
        if context_chunks < 0:
            raise InputError(f"context_chunks must be 0 or more, got {context_chunks!r}")
        if chunk_max_new_tokens is not None and chunk_max_new_tokens < 1:
            raise InputError(f"chunk_max_new_tokens must be at least 1, got {chunk_max_new_tokens!r}")
        self.generator = generator
        self.llm = llm
        self.mode = "model" if generator is not None else "prompted"
        self.template = _stage_template(
            template, generator, "aligner-instruction", {"question", "answer"}, "a corrector template takes 'question' and 'answer'"
        )
        self.streaming: Streaming = streaming
        self.params = _generation_defaults(
            self.template, generator, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens
        )
        ChunkSplitter(chunk_min_chars)  # validates
        self.chunk_min_chars = chunk_min_chars
        self.context_chunks = context_chunks
        self.chunk_max_new_tokens = chunk_max_new_tokens
        self.seed = seed
        self.check = check or CorrectionCheck()

    def __repr__(self) -> str:
        return (
            f"ResponseCorrector(name={self.name!r}, mode={self.mode!r}, template={self.template.name!r}, "
            f"streaming={self.streaming!r})"
        )

    def deterministic(self) -> bool:
        """Greedy decoding (the default; in prompted mode, an LLM that reports itself deterministic), no timeout."""
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
    ) -> "ResponseCorrector":
        """Model mode from a folder: an adapter trained by ``alignware train corrector`` (its manifest names
        its template and base), or a released Aligner checkpoint folder used unchanged (template
        ``"aligner-v1.0"`` unless ``template`` says otherwise, e.g. ``"aligner-correction"``)."""
        from .generator import TextGenerator

        gen = TextGenerator.from_pretrained(path, base=base, template=template, kind="corrector")
        return cls(gen, **stage_kw)

    @classmethod
    def prompted(
        cls, llm: "LLM | str | None" = "embedded", *, llm_options: dict[str, Any] | None = None, **kw: Any
    ) -> "ResponseCorrector":
        """Prompted mode: ``llm`` (a backend, a litellm model string, a local model path, or
        ``"embedded"``) edits the question-answer pair following ``"aligner-instruction"``."""
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
    ) -> "ResponseCorrector":
        """Build from a pipeline config entry (``type: response_corrector``).

        ``mode``: ``"model"`` (needs ``path``) or ``"prompted"`` (uses ``llm``, default ``"embedded"``);
        left out, it is ``"model"`` when ``path`` is given, else ``"prompted"``. Other keys: ``template``,
        ``streaming``, ``temperature``, ``top_p``, ``max_new_tokens``, ``chunk_min_chars``,
        ``context_chunks``, ``chunk_max_new_tokens``, ``seed``, the :class:`CorrectionCheck` fields,
        ``name``, ``on_error``, ``timeout``, ``skip_if`` (``"title_requests"``).
        """
        return _stage_from_config(
            cls, "response_corrector", "a trained adapter or Aligner checkpoint folder", CorrectionCheck,
            ("template", "streaming", "temperature", "top_p", "max_new_tokens", "chunk_min_chars",
             "context_chunks", "chunk_max_new_tokens", "seed"),
            mode=mode, path=path, llm=llm, base=base, llm_options=llm_options, params=params,
        )

    # -- generation ---------------------------------------------------------------------
    def _seed(self, request: ChatRequest | None) -> int | None:
        if self.seed is not None:
            return self.seed
        return request.seed if request is not None else None

    def _complete(self, prompt: str, params: dict[str, Any], seed: int | None) -> _Out:
        if self.generator is not None:
            return _run_generator(self.generator, [prompt], params, seed)[0]
        assert self.llm is not None
        resp = self.llm.complete(_llm_request(prompt, params, seed))
        return _Out(resp.text, str(resp.finish_reason))

    def _complete_many(self, prompts: list[str], params: dict[str, Any], seed: int | None) -> list[_Out]:
        if self.generator is not None:
            return _run_generator(self.generator, prompts, params, seed)
        assert self.llm is not None
        return _run_llm(self.llm, prompts, params, seed)

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
            limit = 2 * len(self.generator.tokenizer(piece, add_special_tokens=False)["input_ids"]) + 32
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
        out = self._complete(self._whole_prompt(question, answer), self.params, seed)
        return self._decide(answer, out, "kept the original answer")

    def _correct_chunk(self, question: str, state: _ChunkState, piece: str, index: int, seed: int | None) -> tuple[str, str | None]:
        """Correct one group. When the model fails on a group (and ``on_error`` is ``"pass"``), that group
        and every later one pass through as they are, so the groups already sent are followed by the
        rest of the original answer, with nothing lost or repeated."""
        if not piece.strip() or state.failed:
            text, reason = piece, None
        else:
            try:
                out = self._complete(self._chunk_prompt(question, state, piece), self._chunk_params(piece), seed)
            except Exception as e:
                if self.on_error == "raise":
                    raise
                state.failed = True
                text, reason = piece, f"chunk {index + 1}: {type(e).__name__}: {e}; the rest of the answer passes through uncorrected"
            else:
                text, reason = self._decide(piece, out, f"chunk {index + 1}: kept the original")
        state.originals.append(piece)
        state.corrected.append(text)
        return text, reason

    def _decide(self, original: str, out: _Out, label: str) -> tuple[str, str | None]:
        correction = out.text.strip()
        reason = check_correction(original.strip(), correction, finish_reason=out.finish_reason, check=self.check)
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
            prompts = [self._whole_prompt(flatten_question(requests[i].messages), responses[i].text) for i in todo]
            outs = self._complete_many(prompts, self.params, seeds.pop())
            for i, o in zip(todo, outs):
                text, reason = self._decide(responses[i].text, o, "kept the original answer")
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
            answer = "".join(chunks)
            text, reason = self._correct_whole(question, answer, seed)
            if reason:
                note(reason)
            if text:
                yield text
            return
        splitter = ChunkSplitter(self.chunk_min_chars)
        state = _ChunkState.new()
        index = 0
        for piece in chunks:
            for group in splitter.feed(piece):
                text, reason = self._correct_chunk(question, state, group, index, seed)
                index += 1
                if reason:
                    note(reason)
                if text:
                    yield text
        for group in splitter.finish():
            text, reason = self._correct_chunk(question, state, group, index, seed)
            index += 1
            if reason:
                note(reason)
            if text:
                yield text

    async def aprocess(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        """Async twin (the work runs in a worker thread; the backends' calls are blocking there)."""
        return await asyncio.to_thread(self.process, request, response)

    async def aprocess_stream(self, request: ChatRequest, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        """Async twin of :meth:`process_stream`: each group is corrected in a worker thread as it completes."""
        question = flatten_question(request.messages)
        seed = self._seed(request)
        if self.streaming == "buffer":
            answer = "".join([c async for c in chunks])
            text, reason = await asyncio.to_thread(self._correct_whole, question, answer, seed)
            if reason:
                note(reason)
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
            text, reason = await asyncio.to_thread(self._correct_chunk, question, state, group, index, seed)
            index += 1
            if reason:
                note(reason)
            if text:
                yield text


# -- training data --------------------------------------------------------------------------------
def build_corrector_data(
    pairs: "Iterable[PreferencePair | dict[str, Any]] | str | os.PathLike[str]",
    *,
    identity_warmup: bool = True,
    template: "str | Template" = "aligner-v1.0",
) -> "tuple[list[SFTExample], list[SFTExample]]":
    """Aligner training examples from preference pairs.

    Main examples: question = the flattened conversation (:func:`flatten_question`), answer = ``rejected``,
    correction = ``chosen``. Warm-up examples (``identity_warmup``, Aligner's first phase: learn to copy
    a good answer): answer = ``chosen``, correction = ``chosen``. Sources are rendered with ``template``.
    Pairs whose ``chosen`` is empty are left out of both. Both examples of a pair carry the pair's index
    as ``group``, so ``train_sft`` leaves out the warm-up examples of held-out pairs (their targets are
    the held-out targets).

    Returns:
        ``(examples, warmup_examples)``; ``warmup_examples`` is empty without ``identity_warmup``.
    """
    from .sft import SFTExample
    from .templates import get_template

    tmpl = get_template(template)
    if set(tmpl.fields) != {"question", "answer"}:
        raise InputError(f"template {tmpl.name!r} takes fields {list(tmpl.fields)}; a corrector template takes question and answer")
    examples: list[SFTExample] = []
    warmup: list[SFTExample] = []
    for i, row in enumerate(_as_pairs(pairs)):
        chosen = row.chosen.strip()
        if not chosen:
            continue
        question = flatten_question(row.prompt)
        examples.append(SFTExample(source=tmpl.render(question=question, answer=row.rejected.strip()), target=chosen, group=i))
        if identity_warmup:
            warmup.append(SFTExample(source=tmpl.render(question=question, answer=chosen), target=chosen, group=i))
    return examples, warmup


# -- command line -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """``alignware train corrector`` arguments: data and the SFT flags."""
    from .sft import add_train_args

    p = argparse.ArgumentParser(
        prog="alignware train corrector",
        description="Train an Aligner response corrector (a LoRA adapter) from preference pairs.",
    )
    p.add_argument("--data", required=True, help="preference pairs (JSONL)")
    p.add_argument("--out", required=True, help="output folder for the adapter and its checkpoints")
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    p.add_argument(
        "--no-identity-warmup", dest="identity_warmup", action="store_false",
        help="skip the identity warm-up phase (answer = chosen -> chosen) before the correction phase",
    )
    add_train_args(p)
    return p


def train_main(argv: Sequence[str]) -> int:
    """``alignware train corrector --data PAIRS --out DIR [SFT flags]``."""
    from middleware.training import set_threads

    from .sft import config_from_args, train_sft

    args = build_parser().parse_args(list(argv))
    config = config_from_args(args, kind="corrector")
    pairs = load_pairs(args.data, limit=args.limit)
    examples, warmup = build_corrector_data(pairs, identity_warmup=args.identity_warmup, template=config.template)
    if not examples:
        raise InputError(f"{args.data}: no training examples (every pair has an empty chosen answer)")
    print(f"{len(pairs)} pairs: {len(examples)} correction examples, {len(warmup)} identity warm-up examples")
    set_threads(args.threads)
    result = train_sft(
        examples, config, Path(args.out), warmup_examples=warmup or None, resume=args.resume, progress=not args.quiet
    )
    print(_result_line(result))
    return 130 if result.interrupted else 0

