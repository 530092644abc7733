"""``TextGenerator``: a causal LM (+ optional LoRA adapter) continuing rendered template text.

The prompt rewriter and the response corrector both run their trained model through it: one adapter
on a ``SharedBase`` (or none, or a full released checkpoint), batched with left padding, or streamed,
with the decode loop of ``middleware.decoding``. The adapter folder layout and its manifest are
described in ``middleware.adapters``; what is rewriter-specific in them (the kinds, the template a
checkpoint was trained with) is read here. ``StageGenerator`` is what a stage needs of such a model;
``rewriters.remote_generator.RemoteGenerator`` is the other kind: the same adapter served by an engine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol, Sequence

from middleware.adapters import MANIFEST, adapter_base, read_manifest, verify_adapter
from middleware.decoding import REPLACEMENT_CHAR, Decoder, Row, check_sampling
from middleware.errors import AlignwareError, CheckpointError, InputError
from middleware.shared_base import SharedBase

from .templates import DEFAULT_TEMPLATES, Template, get_template

log = logging.getLogger("alignware")

KINDS = ("rewriter", "corrector")

__all__ = ["Generation", "KINDS", "StageGenerator", "TextGenerator", "checkpoint_template", "decoding_params"]


@dataclass
class Generation:
    """One generated continuation.

    Attributes:
        text: the decoded continuation, special tokens removed, surrounding whitespace stripped.
        finish_reason: ``"stop"`` (the model ended it) or ``"length"`` (cut at ``max_new_tokens``).
        n_tokens: generated tokens, not counting the end-of-sequence token.
        prompt_tokens: tokens of the prompt.
    """

    text: str
    finish_reason: Literal["stop", "length"]
    n_tokens: int
    prompt_tokens: int = 0


def _adapter_name(kind: str, folder: Path) -> str:
    digest = hashlib.sha1(str(folder).encode("utf-8")).hexdigest()[:10]
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{kind}-{folder.name}")[:60] + f"-{digest}"


class StageGenerator(Protocol):
    """What a text-to-text stage needs of its model: a ``TextGenerator`` (local) or a
    ``rewriters.remote_generator.RemoteGenerator`` (an adapter served by an inference engine).

    ``template`` and ``manifest`` (its ``generation`` defaults) are the checkpoint's; ``generate_ex``
    continues rendered template texts; ``count_tokens`` sizes a chunked correction's token limit.
    """

    template: Template
    manifest: dict[str, Any]

    def generate_ex(
        self,
        texts: str | Sequence[str],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int = 8,
    ) -> list[Generation]: ...

    def count_tokens(self, text: str) -> int: ...


def _template_from_manifest(manifest: dict[str, Any], where: Path) -> Template:
    name = manifest.get("template")
    spec = manifest.get("template_spec")
    if spec:
        own = Template.from_dict(spec)
        try:
            known = get_template(own.name)
        except InputError:
            return own
        if (known.text, known.fields) != (own.text, own.fields):
            log.warning("%s: template %r differs from the registered one; using the checkpoint's own", where, own.name)
            return own
        return known
    if not name:
        raise CheckpointError(f"{where / MANIFEST}: no template recorded")
    return get_template(name)


def checkpoint_template(folder: Path, manifest: dict[str, Any], template: "str | Template | None", kind: str | None) -> Template:
    """The template of the adapter in ``folder``: ``template`` if given, else the one its manifest
    records, else the ``kind``'s published one; ``InputError`` when none of them says."""
    if template is not None:
        return get_template(template)
    if manifest.get("template") or manifest.get("template_spec"):
        return _template_from_manifest(manifest, folder)
    if kind:
        return get_template(DEFAULT_TEMPLATES[kind])
    raise InputError(f"{folder} has no {MANIFEST}: pass template=... or kind='rewriter'|'corrector'")


def decoding_params(
    manifest: dict[str, Any], max_new_tokens: int | None, temperature: float | None, top_p: float | None
) -> tuple[int, float, float]:
    """``(max_new_tokens, temperature, top_p)``: the given values, else the manifest's ``generation``
    defaults, else 256 new tokens, greedy; ``InputError`` for values out of range."""
    g = manifest.get("generation") or {}
    mnt = int(max_new_tokens if max_new_tokens is not None else g.get("max_new_tokens", 256))
    temp = float(temperature if temperature is not None else g.get("temperature", 0.0) or 0.0)
    tp = float(top_p if top_p is not None else g.get("top_p", 1.0) or 1.0)
    if mnt < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {mnt}")
    check_sampling(temp, None, tp)
    return mnt, temp, tp


class TextGenerator:
    """A causal LM (+ optional adapter) mapping rendered template text to a continuation.

    The rendered template *is* the prompt: no chat template is applied. Build one with
    ``from_pretrained`` (a trained adapter folder, or a released full checkpoint) or ``untrained``.

    Attributes:
        template: the prompt template the checkpoint was trained with.
        manifest: kind, base model, template and generation defaults.
        shared: the ``SharedBase`` the model lives on.
        adapter: the adapter name on ``shared`` (``None``: the plain model).
    """

    def __init__(
        self,
        shared: SharedBase,
        *,
        template: "Template | str",
        manifest: dict[str, Any] | None = None,
        adapter: str | None = None,
        path: Path | None = None,
    ) -> None:
        self.shared = shared
        self.template = get_template(template)
        self.adapter = adapter
        self.path = path
        m = dict(manifest or {})
        m.setdefault("kind", None)
        m.setdefault("base_model", shared.base_model)
        m.setdefault("template", self.template.name)
        m.setdefault("generation", dict(self.template.generation))
        self.manifest = m
        # every forward pass runs with the adapter switched on, under the base's lock, so generations on
        # other threads (other adapters) interleave with this one safely
        self._decoder = Decoder(shared.scoped(adapter), self.tokenizer, require_eos=True)

    def __repr__(self) -> str:
        return (
            f"TextGenerator(kind={self.kind!r}, template={self.template.name!r}, base={self.shared.base_model!r}, "
            f"adapter={self.adapter!r})"
        )

    @property
    def model(self) -> Any:
        """The (shared) model object."""
        return self.shared.model

    @property
    def tokenizer(self) -> Any:
        return self.shared.tokenizer

    @property
    def kind(self) -> str | None:
        return self.manifest.get("kind")

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: "str | os.PathLike[str]",
        *,
        base: "SharedBase | str | Path | None" = None,
        template: "str | Template | None" = None,
        kind: str | None = None,
        device: Any = None,
        adapter_name: str | None = None,
    ) -> "TextGenerator":
        """Load a trained stage model.

        ``path`` is either an adapter folder written by ``train_sft`` (it has ``alignware.json``), loaded
        as a named adapter onto the shared base the manifest names (or ``base``), or a full model
        folder (a released BPO / Aligner checkpoint), loaded as its own model. A PEFT adapter folder
        without manifest works too, on ``base`` or the base its ``adapter_config.json`` names.

        ``template`` overrides the checkpoint's template; a folder without manifest needs it, or a
        ``kind`` (``"rewriter"`` -> ``"bpo"``, ``"corrector"`` -> ``"aligner-v1.0"``).
        """
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder (expected an adapter folder or a model folder)")
        folder = folder.resolve()
        manifest = read_manifest(folder)
        if kind is not None and kind not in KINDS:
            raise InputError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")

        if manifest is not None or (folder / "adapter_config.json").is_file():
            manifest = dict(manifest or {})
            if manifest.get("kind") and kind and manifest["kind"] != kind:
                raise InputError(f"{folder} holds a {manifest['kind']} model, not a {kind}")
            kind = manifest.get("kind") or kind
            if base is None:
                base = manifest.get("base_model") or adapter_base(folder)
            if isinstance(base, str) and base == "embedded":
                base = None
            shared = SharedBase.get(base, device=device)
            named = manifest.get("base_model")
            if named and named != shared.base_model:
                log.warning("%s was trained on %s; loading it onto %s", folder, named, shared.base_model)
            tmpl = checkpoint_template(folder, manifest, template, kind)
            verify_adapter(folder, manifest)
            name = adapter_name or _adapter_name(kind or "adapter", folder)
            shared.add_adapter(name, folder)
            manifest.update(kind=kind, base_model=shared.base_model, template=tmpl.name)
            manifest.setdefault("generation", dict(tmpl.generation))
            return cls(shared, template=tmpl, manifest=manifest, adapter=name, path=folder)

        if not (folder / "config.json").is_file():
            raise InputError(f"{folder}: neither an adapter folder ({MANIFEST} / adapter_config.json) nor a model folder (config.json)")
        if base is not None:
            raise InputError(f"{folder} is a full model: it is loaded as its own model, so base= does not apply")
        if template is None:
            if kind is None:
                raise InputError(
                    f"{folder} is a full model without {MANIFEST}: pass template= (e.g. 'bpo', 'aligner-v1.0') or kind="
                )
            template = DEFAULT_TEMPLATES[kind]
        tmpl = get_template(template)
        shared = SharedBase.get(folder, device=device)
        manifest = {"kind": kind, "base_model": shared.base_model, "template": tmpl.name, "generation": dict(tmpl.generation)}
        return cls(shared, template=tmpl, manifest=manifest, adapter=None, path=folder)

    @classmethod
    def untrained(
        cls, base: "SharedBase | str | Path | None" = None, *, template: "str | Template", kind: str, device: Any = None
    ) -> "TextGenerator":
        """The plain base model (no adapter) with ``template``: a baseline, or a starting point."""
        if kind not in KINDS:
            raise InputError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        shared = SharedBase.get(base, device=device)
        tmpl = get_template(template)
        manifest = {"kind": kind, "base_model": shared.base_model, "template": tmpl.name, "generation": dict(tmpl.generation)}
        return cls(shared, template=tmpl, manifest=manifest, adapter=None)

    # -- generation ------------------------------------------------------------------------------
    def render(self, **values: str) -> str:
        """``self.template.render(**values)``."""
        return self.template.render(**values)

    def count_tokens(self, text: str) -> int:
        """The tokens of ``text`` (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _params(self, max_new_tokens: int | None, temperature: float | None, top_p: float | None) -> tuple[int, float, float]:
        return decoding_params(self.manifest, max_new_tokens, temperature, top_p)

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        out = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"texts[{i}] must be a string, got {type(t).__name__}")
            ids = list(self.tokenizer(t)["input_ids"])
            eos = self.tokenizer.eos_token_id
            if len(ids) > 1 and ids[-1] == eos and not t.endswith(str(self.tokenizer.eos_token)):
                ids = ids[:-1]  # as in training: the prompt must stay open
            if not ids:
                raise InputError(f"texts[{i}] is empty: nothing to continue from")
            context = self._decoder.context
            if context and len(ids) >= context:
                raise InputError(f"texts[{i}] is {len(ids)} tokens long; the model's context is {context} tokens")
            out.append(ids)
        return out

    def _rows(
        self, encoded: list[list[int]], max_new: int, temperature: float, top_p: float, seed: int | None, *, incremental: bool = False
    ) -> list[Row]:
        check_sampling(None, seed)
        context = self._decoder.context
        return [
            Row(
                prompt_ids=ids,
                max_new=min(max_new, context - len(ids)) if context else max_new,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                incremental=incremental,
            )
            for ids in encoded
        ]

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
        """Continue each text; return text, finish reason and token counts for each.

        ``None`` parameters take the checkpoint's defaults (manifest ``generation``), else greedy decoding
        and 256 new tokens. Texts run ``batch_size`` at a time, sorted by length and left-padded; every
        row stops on its own at EOS, and under greedy decoding a batched result equals the one-by-one
        result. With ``seed``, each text is sampled from its own generator seeded with it, so sampled
        results are repeatable and do not depend on batching (the global random state is not touched).
        """
        items: list[str] = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            return []
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        max_new, temp, tp = self._params(max_new_tokens, temperature, top_p)
        encoded = self._encode(items)
        rows = self._rows(encoded, max_new, temp, tp, seed)
        order = sorted(range(len(items)), key=lambda i: len(encoded[i]))
        try:
            for start in range(0, len(order), batch_size):
                for _ in self._decoder.run([rows[i] for i in order[start : start + batch_size]]):
                    pass
        except AlignwareError:
            raise
        except Exception as e:
            raise AlignwareError(f"generation with {self!r} failed: {type(e).__name__}: {e}") from e
        return [
            Generation(text=r.text.strip(), finish_reason=r.finish or "length", n_tokens=len(r.ids),
                       prompt_tokens=len(r.prompt_ids))
            for r in rows
        ]

    def generate(
        self,
        texts: str | Sequence[str],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int = 8,
    ) -> list[str]:
        """Continue each text (a string counts as a list of one); return the continuations.

        See ``generate_ex`` for the parameters and for whether an output was cut at the length limit.
        """
        return [
            g.text
            for g in self.generate_ex(
                texts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size
            )
        ]

    def stream(
        self,
        text: str,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Yield the continuation of ``text`` in decoded pieces as tokens come.

        The pieces joined equal ``generate(text, ...)[0]`` under the same settings (surrounding whitespace
        and incomplete characters are held back). Generation runs in the consuming thread, one token per
        step; closing the iterator early stops it.
        """
        max_new, temp, tp = self._params(max_new_tokens, temperature, top_p)
        (row,) = self._rows(self._encode([text]), max_new, temp, tp, seed, incremental=True)
        sent = ""
        for _ in self._decoder.run([row]):
            if row.finish is not None:
                break
            safe = row.text.lstrip().rstrip(REPLACEMENT_CHAR).rstrip()
            if len(safe) > len(sent) and safe.startswith(sent):
                yield safe[len(sent) :]
                sent = safe
        final = row.text.strip()
        if len(final) > len(sent) and final.startswith(sent):
            yield final[len(sent) :]
