"""The BPO prompt rewriter: a ``PromptStage`` that rewrites the user's last message into a prompt the
LLM answers better (Black-Box Prompt Optimization, Cheng et al. 2023).

Two modes (see :mod:`rewriters.stage`):

- **model**: a trained text-to-text model (by default a LoRA adapter on the embedded model, or a released
  BPO checkpoint folder, unchanged) prompted with its template (``"bpo"`` by default). Decoding follows
  BPO's published inference settings: ``top_p`` 0.9, ``temperature`` 0.6 (``temperature=0`` is greedy).
- **prompted**: any ``LLM`` backend (a litellm model string, a local model, the embedded model) given an
  expert-prompt-engineer instruction (template ``"bpo-instruction"``). No training needed.

Whatever the mode, a rewrite that fails a safeguard is dropped: the request goes on with the original
prompt and the stage's trace says why (see :func:`rewriters.rewrite_checks.check_rewrite`). Training
data comes from :mod:`rewriters.rewriter_data`, training from ``alignware train rewriter``.
"""

from __future__ import annotations

from typing import Sequence

from middleware.stages import PromptStage, batch_item, note
from middleware.types import ChatRequest

from .rewrite_checks import RewriteCheck, check_rewrite, clean_rewrite
from .stage import Generated, TextStage, llm_request

__all__ = ["PromptRewriter"]


class PromptRewriter(TextStage, PromptStage):
    """Rewrites the last user message of each request (BPO); the rest of the conversation is kept as it
    is. The rewriter sees the last user message only, as BPO was trained on single prompts.

    Build it with :meth:`from_pretrained` (model mode: an adapter trained by ``alignware train rewriter``,
    or a released BPO checkpoint folder, template ``"bpo"``), :meth:`prompted` (any LLM, template
    ``"bpo-instruction"``) or :meth:`from_config` (``type: prompt_rewriter``).

    Args:
        generator: a ``rewriters.generator.TextGenerator`` (model mode).
        llm: an ``LLM`` backend (prompted mode); exactly one of ``generator`` and ``llm``.
        template: the template name or ``Template``; default: the generator's own, or ``"bpo-instruction"``.
        temperature, top_p, max_new_tokens: decoding; default: the checkpoint's settings, else the
            template's published ones (BPO: temperature 0.6, top_p 0.9). ``temperature=0`` decodes greedily.
        seed: seed for sampling (``None``: the request's seed, if any).
        check: the safeguard settings (:class:`RewriteCheck`).
        name, on_error, timeout, skip_if: the stage settings (see ``middleware.stages.Stage``).

    Config keys besides ``mode``, ``path``, ``llm``, ``base``, ``llm_options``, ``remote``: ``template``,
    ``temperature``, ``top_p``, ``max_new_tokens``, ``seed``, ``min_ratio``, ``max_ratio``,
    ``slack_words``, ``min_key_overlap``, ``check_answer`` (and the other :class:`RewriteCheck` fields),
    ``name``, ``on_error``, ``timeout``, ``skip_if`` (``"title_requests"``).
    """

    config_type = "prompt_rewriter"
    checkpoint_kind = "rewriter"
    checkpoint_description = "a trained adapter or BPO checkpoint folder"
    default_template = "bpo-instruction"
    template_fields = frozenset({"prompt"})
    template_error = "a rewriter template takes exactly one field, 'prompt'"
    check_type = RewriteCheck
    config_options = ("template", "temperature", "top_p", "max_new_tokens", "seed")

    check: RewriteCheck

    def __repr__(self) -> str:
        return f"PromptRewriter(name={self.name!r}, mode={self.mode!r}, template={self.template.name!r})"

    # -- rewriting ------------------------------------------------------------------------
    def rewrite(self, prompt: str, *, seed: int | None = None) -> tuple[str, str | None]:
        """Rewrite one prompt; return ``(text, reason)``: the rewrite and ``None``, or the original
        prompt and why the rewrite was dropped."""
        return self._decide(prompt, self._generate([prompt], seed)[0])

    def rewrite_many(self, prompts: Sequence[str], *, seed: int | None = None) -> list[tuple[str, str | None]]:
        """Rewrite many prompts (one batch in model mode); same results as :meth:`rewrite`."""
        outs = self._generate(list(prompts), seed)
        return [self._decide(p, o) for p, o in zip(prompts, outs)]

    def _generate(self, prompts: list[str], seed: int | None) -> list[Generated]:
        return self._generate_many([self.template.render(prompt=p) for p in prompts], self.params, seed)

    def _decide(self, prompt: str, out: Generated) -> tuple[str, str | None]:
        if out.finish_reason == "length":
            return prompt, f"rewrite cut off at max_new_tokens={self.params['max_new_tokens']}"
        text = clean_rewrite(out.text)
        reason = check_rewrite(prompt, text, self.check)
        if reason is not None:
            return prompt, reason
        return text, None

    def _apply(self, request: ChatRequest, out: Generated) -> ChatRequest:
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
            llm_request(self.template.render(prompt=prompt), self.params, self._seed(request))
        )
        return self._apply(request, Generated(resp.text, str(resp.finish_reason)))
