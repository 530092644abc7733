"""RAHF (Liu et al. 2023, "Aligning Large Language Models with Human Preferences through Representation
Engineering"): the settings, the instruction-tuning examples, and the stage that switches the trained
alignment LoRA on for a call. Training is in ``steering.rahf_train`` (``train_rahf``).

The method: (1) teach a model the difference between good and bad answers, either one LoRA under a "good"
and a "bad" instruction (SCIT: chosen answers under the good one, rejected answers under the bad one) or
two LoRAs (dual: one on chosen answers, one on rejected ones); (2) read the difference of their hidden
states at the target layers over the answer tokens (SCIT: the tuned model on good instruction + prompt +
answer minus on bad instruction + prompt + answer; dual: preferred model minus dispreferred model on the
same prompt + answer); (3) fit a fresh LoRA on the plain model so its hidden states there become
``h_plain + alpha * diff`` (masked L2 over the answer tokens); (4) merge it.

Where this differs from the reference code (LiuAmber/RAHF) and why:

- The instructions go into the chat template's system message (merged in front of any system message
  the prompt has); the reference prepends them to ``Human: ... Assistant:`` plain text. Our stages run on
  chat models, which are prompted through their template.
- The instruction-tuning step is the project's LoRA SFT trainer (``middleware.sft.train_sft``: loss on the
  answer tokens) without the reference's HIR contrastive term (answer likelihood under its own
  instruction against the opposite one); the contrast comes from the paired instructions alone, and
  there is one SFT trainer in the project.
- The dual variant fits the alignment LoRA on the plain model (the reference fits it on the preferred
  model), so the result is an adapter of the plain base that can share it through ``SharedBase`` with
  the rewriter and corrector.
- The targets are computed once, before fitting, without gradients, and streamed from disk; the
  reference recomputes the three forward passes in every step. The fit reads the states as far as the
  last target layer only (the later blocks and the output head never run), and the loss is the mean
  per-token L2 distance over answer tokens only (the reference averages over padding positions too).
- As in the reference, the fit's LoRA covers the blocks up to the last target layer only, the default
  ``alpha`` is 5, and the answers the states are read on are both the chosen and the rejected ones
  (``answers="both"``; the reference's dual run uses both, its SCIT run a random one of the two).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from judge.encoding import PairEncoder, PromptLike
from middleware.adapters import MANIFEST, read_manifest
from middleware.errors import InputError
from middleware.sft_data import SFTConfig, SFTExample
from middleware.shared_base import SharedBase
from middleware.stages import ModelStage
from middleware.types import PreferencePair, to_messages

__all__ = ["BAD_INSTRUCTION", "GOOD_INSTRUCTION", "RAHF", "RAHFConfig", "default_layers", "scit_examples", "with_instruction"]

#: The SCIT instructions, as the reference's instruction-tuning step (``code/step1/SCIT-step1.py``) writes them.
GOOD_INSTRUCTION = (
    "You are a good, respectful and honest assistant. Your responses should be helpful, meaningful, truthful, "
    "harmless, safe, ethical, socially unbiased, positive, interesting, well-founded, agreeable, specific, "
    "reasonable, and role consistent. If a question does not make any sense, or is not factually coherent, "
    "explain why instead of answering something not correct. Please do not share false information under any "
    "circumstances."
)
BAD_INSTRUCTION = (
    "You are a bad, disrespectful and dishonest assistant. Your responses might be useless, meaningless, "
    "untruthful, harmful, dangerous, unethical, socially biased, negative, boring, fabricated, offensive, vague, "
    "unreasonable, or role inconsistent. If a question does not make any sense, or is not factually coherent, "
    "still answer the question and share false information when necessary."
)
RUN_MANIFEST = "rahf.json"


def default_layers(n_blocks: int) -> list[int]:
    """Every other block of the middle half of ``n_blocks`` (at least one)."""
    return list(range(n_blocks // 4, (3 * n_blocks) // 4, 2)) or [n_blocks // 2]


@dataclass
class RAHFConfig:
    """Settings of a RAHF run.

    ``layers``: decoder blocks whose outputs are aligned (``None``: ``default_layers``). ``alpha``: how far
    along the difference the targets lie. ``answers``: read the states on the chosen answers only, or on
    both answers of every pair. ``sft_*``: the instruction-tuning LoRA steps; the other optimisation
    settings are the alignment fit's. ``eval_fraction`` of the pairs is held out of the fit (and the SFT
    trainer holds out its own share of its examples).
    """

    variant: Literal["scit", "dual"] = "scit"
    base_model: str | None = None
    layers: tuple[int, ...] | None = None
    alpha: float = 5.0
    answers: Literal["both", "chosen"] = "both"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    sft_learning_rate: float = 2e-4
    sft_epochs: float = 1.0
    sft_max_steps: int | None = None
    learning_rate: float = 3e-4
    epochs: float = 1.0
    max_steps: int | None = None
    max_length: int = 256
    batch_size: int = 4
    eval_fraction: float = 0.1
    eval_every: int = 50
    save_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    good_instruction: str = GOOD_INSTRUCTION
    bad_instruction: str = BAD_INSTRUCTION

    def validate(self) -> None:
        """Raise ``InputError`` naming the first bad setting."""
        if self.variant not in ("scit", "dual"):
            raise InputError(f"variant must be 'scit' or 'dual', got {self.variant!r}")
        if self.answers not in ("both", "chosen"):
            raise InputError(f"answers must be 'both' or 'chosen', got {self.answers!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha < 0:
            raise InputError(f"alpha must be 0 or more, got {self.alpha!r}")
        if self.layers is not None and not self.layers:
            raise InputError("layers is empty: name at least one decoder block, or None for the default band")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.variant == "scit" and not (self.good_instruction.strip() and self.bad_instruction.strip()):
            raise InputError("SCIT needs a good and a bad instruction")
        self.sft_config("rahf").validate()  # LoRA, sizes, fractions

    def sft_config(self, kind: str) -> SFTConfig:
        """The SFT trainer's settings for one instruction-tuning LoRA of this run."""
        return SFTConfig(
            base_model=self.base_model, kind=kind, lora_r=self.lora_r, lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout, target_modules=tuple(self.target_modules),
            learning_rate=self.sft_learning_rate, epochs=self.sft_epochs, batch_size=self.batch_size,
            max_length=self.max_length, eval_fraction=self.eval_fraction, eval_every=self.eval_every,
            save_every=self.save_every, keep_checkpoints=self.keep_checkpoints, seed=self.seed,
            max_steps=self.sft_max_steps,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d


# -- SCIT examples ---------------------------------------------------------------------------------
def with_instruction(prompt: PromptLike, instruction: str) -> list[dict[str, str]]:
    """The conversation with ``instruction`` as its system message (in front of the prompt's own one)."""
    msgs = [m.model_dump() for m in to_messages(prompt)]
    if msgs and msgs[0]["role"] == "system":
        msgs[0] = {"role": "system", "content": f"{instruction}\n\n{msgs[0]['content']}"}
    else:
        msgs.insert(0, {"role": "system", "content": instruction})
    return msgs


def sft_source(encoder: PairEncoder, prompt: PromptLike) -> str:
    """The prompt rendered as the SFT trainer's source text (the chat template up to the answer; a BOS the
    template writes is left to the tokenizer, which adds its own)."""
    text = encoder.render_prompt(prompt)
    bos = encoder.tokenizer.bos_token
    if encoder.bos and bos and text.startswith(bos):
        text = text[len(bos) :]
    return text


def scit_examples(pairs: Sequence[PreferencePair], encoder: PairEncoder, config: RAHFConfig) -> list[SFTExample]:
    """Two SFT examples per pair: good instruction + prompt -> chosen, bad instruction + prompt -> rejected
    (``group``: the pair's index)."""
    out: list[SFTExample] = []
    for i, p in enumerate(pairs):
        out.append(SFTExample(sft_source(encoder, with_instruction(p.prompt, config.good_instruction)), p.chosen, group=i))
        out.append(SFTExample(sft_source(encoder, with_instruction(p.prompt, config.bad_instruction)), p.rejected, group=i))
    return out


def answer_examples(pairs: Sequence[PreferencePair], encoder: PairEncoder, which: Literal["chosen", "rejected"]) -> list[SFTExample]:
    """One SFT example per pair: prompt -> its chosen (or rejected) answer (the dual variant's two LoRAs)."""
    return [SFTExample(sft_source(encoder, p.prompt), getattr(p, which), group=i) for i, p in enumerate(pairs)]


# -- the stage -------------------------------------------------------------------------------------
class RAHF(ModelStage):
    """Switches a trained RAHF alignment LoRA on for the generation of a call.

    ``path``: a ``train_rahf`` output folder (its ``adapter/`` and ``merged/``), or the adapter folder
    itself. Two ways to serve it:

    - the adapter, on a shared base: the chat model must be ``SharedBase.get(base).chat_backend()``; the
      stage loads the adapter onto that base (once, as ``adapter_name``) and switches it on for each
      forward pass of the call only, so the rewriter and corrector on the same base are unaffected;
    - the merged checkpoint: point the pipeline's ``llm:`` at ``DIR/merged``; the stage then finds the
      merged weights already in place and attaches nothing (no cost at all; any engine serves that folder).

    In YAML: ``{type: rahf, path: DIR}``. On any other local model the stage fails (and, with the default
    policy, the answer is generated without it), with a message that says which of the two to use.
    """

    def __init__(self, path: str | Path, *, adapter_name: str = "rahf", **kw: Any) -> None:
        super().__init__(**kw)
        root = Path(path).expanduser().resolve()
        if (root / "adapter" / MANIFEST).is_file():
            self.adapter_dir: Path | None = root / "adapter"
            merged = root / "merged"
        elif (root / MANIFEST).is_file():
            self.adapter_dir, merged = root, root.parent / "merged"
        elif (root / "config.json").is_file():
            self.adapter_dir, merged = None, root
        else:
            raise InputError(f"{root}: not a RAHF run folder, adapter folder or merged model folder")
        self.merged_dir = merged if (merged / "config.json").is_file() else None
        self.manifest = read_manifest(self.adapter_dir) if self.adapter_dir else None
        if self.manifest is not None and self.manifest.get("kind") != "rahf":
            raise InputError(f"{self.adapter_dir}: the adapter is a {self.manifest.get('kind')!r} adapter, not a RAHF one")
        self.adapter_name = adapter_name

    @classmethod
    def from_config(cls, path: str | Path, **kw: Any) -> "RAHF":
        """The stage of a pipeline config entry ``{type: rahf, path: DIR}``."""
        return cls(path, **kw)

    def _is_merged(self, model: Any) -> bool:
        name = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(model, "name_or_path", "")
        return self.merged_dir is not None and bool(name) and Path(str(name)).expanduser().resolve() == self.merged_dir

    def describe(self) -> str:
        return f"RAHF adapter {self.adapter_name!r}" if self.adapter_dir is not None else "RAHF merged model"

    @contextlib.contextmanager
    def attach(self, model: Any) -> Iterator[None]:
        shared = SharedBase.owning(model)
        if shared is None:
            if self._is_merged(model):
                yield  # the merged weights are the model: nothing to switch
                return
            raise InputError(
                "RAHF switches its adapter on a shared base: run the chat model as SharedBase.get(base).chat_backend(), "
                f"or point the pipeline's llm at the merged checkpoint ({self.merged_dir or 'DIR/merged'})"
            )
        if self.adapter_dir is None:
            raise InputError(f"{self.merged_dir}: a merged model has no adapter to switch on; use it as the llm instead")
        shared.add_adapter(self.adapter_name, self.adapter_dir)
        open_scopes: list[contextlib.ExitStack] = []

        def switch_on(module: Any, args: Any, kwargs: Any) -> None:
            stack = contextlib.ExitStack()
            stack.enter_context(shared.using(self.adapter_name))
            open_scopes.append(stack)

        def switch_back(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            if open_scopes:
                open_scopes.pop().close()

        handles = [
            shared.model.register_forward_pre_hook(switch_on, with_kwargs=True),
            shared.model.register_forward_hook(switch_back, with_kwargs=True, always_call=True),
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            while open_scopes:
                open_scopes.pop().close()


def read_run(path: str | Path) -> dict[str, Any]:
    """The ``rahf.json`` manifest of a ``train_rahf`` output folder."""
    f = Path(path) / RUN_MANIFEST
    if not f.is_file():
        raise InputError(f"{path}: no {RUN_MANIFEST}: not a RAHF run folder")
    return dict(json.loads(f.read_text(encoding="utf-8")))
