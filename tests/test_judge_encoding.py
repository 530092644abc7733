"""Reward-model encoding: truncation and the shared-prompt packing (tiny random model)."""

from __future__ import annotations

from pathlib import Path

import torch

from judge import RewardModel
from judge.encoding import fit as _fit
from judge_pairs import cfg, toy_pairs

def test_fit_keeps_response_and_cuts_prompt_from_the_left() -> None:
    p, (c, r) = _fit(list(range(100)), [[1000, 1001], [2000]], 10)
    assert c == [1000, 1001] and r == [2000]
    assert p == list(range(92, 100))
    p, (c,) = _fit(list(range(10)), [list(range(500, 600))], 20)
    assert len(p) + len(c) == 20 and p == list(range(5, 10)) and c[0] == 500


def test_shared_prompt_packing_matches_separate_sequences(tiny_model_dir: Path) -> None:
    rm = RewardModel.create(cfg(tiny_model_dir, train="lora"))
    enc = rm.encode_pairs(toy_pairs(6))
    with torch.no_grad():
        c1, r1 = rm.pair_rewards(enc, share_prompt=True)
        c2, r2 = rm.pair_rewards(enc, share_prompt=False)
    torch.testing.assert_close(c1, c2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r1, r2, atol=1e-5, rtol=1e-5)
    scored = rm.score_batch([(p.prompt, p.chosen) for p in toy_pairs(6)])
    torch.testing.assert_close(torch.tensor(scored), c1, atol=1e-5, rtol=1e-5)
