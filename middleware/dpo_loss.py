"""The direct preference optimisation objective and what it reads: per-sequence log-probabilities of the
target tokens (``sequence_logps``), the loss with its implicit rewards (``dpo_loss``), and the settings
(``DPOSettings``: β and the loss variant).

For a source ``x`` with a preferred target ``y_w`` and a dispreferred one ``y_l``, policy ``π`` and frozen
reference ``π_ref``, the implicit reward of a target is ``r(y) = β · (log π(y|x) − log π_ref(y|x))``:

- ``sigmoid`` (DPO, Rafailov et al. 2023): ``−log σ(r(y_w) − r(y_l))``, on summed token log-probabilities;
- ``ipo`` (Azar et al. 2023): ``(h − 1/(2β))²`` with ``h`` the same log-ratio difference without β, on
  log-probabilities averaged over each target's tokens (as TRL computes it).

The rewards reported (``chosen``, ``rejected``, their ``margin`` and the ``accuracy``: the share of pairs whose
chosen reward is the higher) are those TRL's ``DPOTrainer`` logs as ``rewards/*``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from .errors import InputError

__all__ = ["DPO_LOSSES", "DPOSettings", "dpo_loss", "sequence_logps"]

DPO_LOSSES = ("sigmoid", "ipo")


@dataclass(frozen=True)
class DPOSettings:
    """``beta``: the strength of the pull towards the reference (larger: stay closer); ``loss``: ``"sigmoid"``
    (DPO) or ``"ipo"``."""

    beta: float = 0.1
    loss: Literal["sigmoid", "ipo"] = "sigmoid"

    def validate(self) -> None:
        """Raise ``InputError`` naming the bad setting."""
        if not isinstance(self.beta, (int, float)) or not self.beta > 0 or self.beta != self.beta or self.beta == float("inf"):
            raise InputError(f"beta must be a positive finite number, got {self.beta!r}")
        if self.loss not in DPO_LOSSES:
            raise InputError(f"loss must be one of {', '.join(DPO_LOSSES)}, got {self.loss!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sequence_logps(target_logits: tuple[Any, Any, Any]) -> tuple[Any, Any]:
    """``(sums, counts)`` per row of a batch: the summed log-probability of each row's target tokens and how
    many there are, from ``TargetLoss.target_logits``'s ``(logits, labels, keep)``."""
    import torch
    import torch.nn.functional as F

    logits, labels, keep = target_logits
    token_logps = -F.cross_entropy(logits.float(), labels, reduction="none")
    rows = keep.nonzero(as_tuple=True)[0]
    sums = torch.zeros(keep.shape[0], dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)
    return sums, keep.sum(dim=1)


def dpo_loss(
    policy_chosen: Any, policy_rejected: Any, ref_chosen: Any, ref_rejected: Any, settings: DPOSettings,
    chosen_tokens: Any = None, rejected_tokens: Any = None,
) -> tuple[Any, Any, Any]:
    """``(losses, chosen_rewards, rejected_rewards)``, one per pair, from summed target log-probabilities
    (tensors of shape ``[pairs]``). ``ipo`` divides each sum by its target's token count
    (``chosen_tokens`` / ``rejected_tokens``, required for it)."""
    import torch.nn.functional as F

    pc, pr, rc, rr = policy_chosen, policy_rejected, ref_chosen, ref_rejected
    if settings.loss == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise InputError("the ipo loss needs the token counts of both targets")
        nc, nr = chosen_tokens.clamp(min=1), rejected_tokens.clamp(min=1)
        pc, rc, pr, rr = pc / nc, rc / nc, pr / nr, rr / nr
    chosen_ratio, rejected_ratio = pc - rc, pr - rr
    h = chosen_ratio - rejected_ratio
    if settings.loss == "ipo":
        losses = (h - 1.0 / (2.0 * settings.beta)) ** 2
    else:
        losses = -F.logsigmoid(settings.beta * h)
    return losses, settings.beta * chosen_ratio.detach(), settings.beta * rejected_ratio.detach()
