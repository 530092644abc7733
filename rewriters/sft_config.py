"""The rewriter's and corrector's side of the LoRA SFT trainer (``middleware.sft``): their ``SFTConfig``
(the kinds ``rewriter``/``corrector`` and their prompt templates, checked, with the template and its
decoding defaults written into the adapter's manifest for ``TextGenerator``) and the command-line
flags of ``alignware train rewriter|corrector``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from middleware import sft_data
from middleware.errors import InputError
from middleware.training import add_training_flags, flag_values

from .generator import KINDS
from .templates import DEFAULT_TEMPLATES, get_template

__all__ = ["SFTConfig", "add_train_args", "config_from_args"]


@dataclass
class SFTConfig(sft_data.SFTConfig):
    """``middleware.sft_data.SFTConfig`` for a text-to-text stage: ``kind`` is ``"rewriter"`` or
    ``"corrector"`` and ``template`` a registered template name (``rewriters.templates``), whose text and
    generation defaults go into the manifest (``template_spec``, ``generation``)."""

    template: str = "bpo"
    kind: str = "rewriter"

    def validate(self) -> None:
        """Raise ``InputError`` naming the first bad setting."""
        if self.kind not in KINDS:
            raise InputError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.template, str):
            raise InputError(f"template is required for a {self.kind} adapter, e.g. {DEFAULT_TEMPLATES[self.kind]!r}")
        get_template(self.template)
        super().validate()

    def manifest_fields(self) -> dict[str, Any]:
        """The template's name, its full spec and its decoding defaults."""
        tmpl = get_template(self.template)
        return {"template": tmpl.name, "template_spec": tmpl.to_dict(), "generation": dict(tmpl.generation)}


def add_train_args(parser: Any) -> None:
    """Add the SFT settings to an ``argparse`` parser (used by ``alignware train rewriter|corrector``): the
    LoRA and data flags, and the flags every ``alignware train ...`` verb shares (``add_training_flags``)."""
    d = SFTConfig()
    g = parser.add_argument_group("fine-tuning (LoRA SFT)")
    g.add_argument("--base-model", default=None, help="base model folder or .gguf (default: the embedded model)")
    g.add_argument("--template", default=None, help="prompt template name (default: bpo for rewriter, aligner-v1.0 for corrector)")
    g.add_argument("--lora-r", type=int, default=d.lora_r, help=f"LoRA rank (default {d.lora_r})")
    g.add_argument("--lora-alpha", type=int, default=d.lora_alpha, help=f"LoRA alpha (default {d.lora_alpha})")
    g.add_argument("--lora-dropout", type=float, default=d.lora_dropout, help=f"LoRA dropout (default {d.lora_dropout})")
    g.add_argument("--target-modules", nargs="+", default=list(d.target_modules), metavar="NAME",
                   help="linear layers to adapt (default: %(default)s)")
    g.add_argument("--max-length", type=int, default=d.max_length, help=f"tokens per example (default {d.max_length})")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs,
                   help=f"epochs of the warm-up phase, when there is one (default {d.warmup_epochs})")
    add_training_flags(
        g, epochs=d.epochs, batch_size=d.batch_size, learning_rate=d.learning_rate, eval_fraction=d.eval_fraction,
        eval_every=d.eval_every, save_every=d.save_every, keep_checkpoints=d.keep_checkpoints, seed=d.seed, device=True,
    )


def config_from_args(args: Any, *, kind: str | None = None) -> SFTConfig:
    """Build an ``SFTConfig`` from parsed ``add_train_args`` flags. ``kind`` (or ``args.kind``) picks the
    default template; the result is validated."""
    kind = kind or getattr(args, "kind", None) or "rewriter"
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    values = flag_values(SFTConfig, args, skip=("kind", "template"))
    if "target_modules" in values:
        mods: list[str] = []
        for m in values["target_modules"]:
            mods.extend(x for x in str(m).replace(",", " ").split() if x)
        values["target_modules"] = tuple(mods)
    cfg = SFTConfig(kind=kind, template=getattr(args, "template", None) or DEFAULT_TEMPLATES[kind], **values)
    cfg.validate()
    return cfg
