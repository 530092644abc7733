"""RE-Control's value function: the TD(0) loss (detached target, terminal term at each trajectory's own
last state), fitting rewards, and training with checkpoints, resume and a held-out split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from middleware.errors import InputError
from steering.value import ReControlConfig, Trajectories, ValueNet, ValueRun, td_loss
from steering_models import one_thread


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks run fastest on one thread
_ = one_thread


def linear_value(w: torch.Tensor) -> Any:
    return lambda h: h @ w


def test_td_target_is_detached() -> None:
    # V(h) = w·h on one trajectory h1, h2 with reward r: the gradient in w must be that of the
    # semi-gradient loss (V(h1) − [V(h2)])² + (V(h2) − r)², with V(h2) held fixed in the first term.
    torch.manual_seed(0)
    h = torch.randn(1, 2, 5)
    r = torch.tensor([0.7])
    w = torch.randn(5, requires_grad=True)
    loss, td, term = td_loss(linear_value(w), h, torch.tensor([2]), r)
    loss.backward()
    v1, v2 = float(h[0, 0] @ w.detach()), float(h[0, 1] @ w.detach())
    expected = 2 * (v1 - v2) * h[0, 0] + 2 * (v2 - 0.7) * h[0, 1]
    attached = expected - 2 * (v1 - v2) * h[0, 1]  # what the reference's attached target gives
    assert torch.allclose(w.grad, expected, atol=1e-5)
    assert not torch.allclose(w.grad, attached, atol=1e-3)
    assert float(td[0]) == pytest.approx((v1 - v2) ** 2, rel=1e-5) and float(term[0]) == pytest.approx((v2 - 0.7) ** 2, rel=1e-5)


def test_terminal_term_uses_each_trajectorys_last_state() -> None:
    # Padded batch of lengths 1 and 3: the terminal error is at index 0 and index 2 (the reference
    # takes the first valid index for every row); padding never enters the TD part.
    torch.manual_seed(1)
    h = torch.randn(2, 3, 4)
    h[0, 1:] = 1e6  # padding of the first row: any use of it would blow up the loss
    w = torch.randn(4)
    lengths, r = torch.tensor([1, 3]), torch.tensor([0.5, -0.25])
    loss, td, term = td_loss(linear_value(w), h, lengths, r)
    v = h @ w
    assert float(term[0]) == pytest.approx(float((v[0, 0] - 0.5) ** 2), rel=1e-5)
    assert float(term[1]) == pytest.approx(float((v[1, 2] + 0.25) ** 2), rel=1e-5)
    assert float(td[0]) == 0.0
    assert float(td[1]) == pytest.approx(float(((v[1, 0] - v[1, 1]) ** 2 + (v[1, 1] - v[1, 2]) ** 2) / 2), rel=1e-5)
    assert float(loss) < 1e3


def _trajectories(lengths: list[int], rewards: list[float], hidden: int = 8, seed: int = 0) -> Trajectories:
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(sum(lengths), hidden, generator=g)
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return Trajectories(states, offsets, torch.tensor(rewards), list(range(len(lengths))))


def test_single_state_trajectories_learn_their_reward(tmp_path: Path) -> None:
    data = _trajectories([1] * 6, [2.0, -1.0, 0.5, 3.0, -2.0, 1.0])
    cfg = ReControlConfig(width=32, depth=2, max_steps=150, batch_size=6, learning_rate=2e-2, weight_decay=0.0, save_every=150, eval_fraction=0.0)
    net = ValueNet(8, 32, 2)
    metrics = ValueRun(net, data, data.subset([]), cfg, tmp_path, {"x": 1}, progress=False, device="cpu").run()
    assert metrics["finished"] and metrics["steps"] == 150
    with torch.no_grad():
        fitted = net.reward(data.states)
    assert torch.allclose(fitted, data.rewards, atol=0.1), (fitted, data.rewards)
    assert (tmp_path / "value_training.png").is_file() and json.loads((tmp_path / "value_metrics.json").read_text())["finished"]


def test_reward_propagates_back_along_a_trajectory(tmp_path: Path) -> None:
    # Two kinds of trajectories whose states differ in one direction: V at the first state learns
    # the sign of the reward the trajectory ends with (the TD targets carry it back).
    g = torch.Generator().manual_seed(3)
    lengths, rewards, parts = [], [], []
    for i in range(16):
        sign = 1.0 if i % 2 else -1.0
        n = 4
        parts.append(torch.randn(n, 8, generator=g) * 0.3 + sign * torch.eye(8)[0])
        lengths.append(n), rewards.append(sign)
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    data = Trajectories(torch.cat(parts), offsets, torch.tensor(rewards), list(range(16)))
    cfg = ReControlConfig(width=32, depth=2, max_steps=200, batch_size=8, learning_rate=1e-2, save_every=200, eval_fraction=0.0)
    net = ValueNet(8, 32, 2)
    ValueRun(net, data, data.subset([]), cfg, tmp_path, {}, progress=False, device="cpu").run()
    with torch.no_grad():
        first = net(torch.stack([data.item(i)[0] for i in range(16)]))
    assert ((first > 0) == (data.rewards > 0)).all()


def test_resume_after_interruption_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    data = _trajectories([3, 1, 4, 2, 5, 2, 3, 1], [1.0, 0.0, -1.0, 2.0, 0.5, -0.5, 1.5, 0.0])
    held = _trajectories([2, 3], [0.0, 1.0], seed=9)
    cfg = ReControlConfig(width=16, depth=1, max_steps=8, batch_size=3, save_every=2, eval_fraction=0.0)

    def run(folder: Path, interrupt_at: int | None = None) -> tuple[ValueNet, dict[str, Any]]:
        net = ValueNet(8, 16, 1)
        r = ValueRun(net, data, held, cfg, folder, {"id": 1}, progress=False, device="cpu")
        if interrupt_at is not None:
            inner = r.compute

            def compute(step: int) -> Any:
                if step == interrupt_at:
                    raise KeyboardInterrupt
                return inner(step)

            r.compute = compute  # type: ignore[method-assign]
        return net, r.run()

    whole, m_whole = run(tmp_path / "a")
    _, m_cut = run(tmp_path / "b", interrupt_at=5)
    assert m_cut["interrupted"] and m_cut["steps"] == 5 and not m_cut["finished"]
    resumed, m_res = run(tmp_path / "b")
    assert m_res["finished"] and m_res["steps"] == 8
    for k, v in whole.state_dict().items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-6), k
    assert m_res["eval_loss"] == pytest.approx(m_whole["eval_loss"], rel=1e-5)

    # Another run's settings in the same folder are refused with a message naming what differs.
    with pytest.raises(InputError, match="different id"):
        ValueRun(ValueNet(8, 16, 1), data, held, cfg, tmp_path / "b", {"id": 2}, progress=False, device="cpu")


def test_config_is_checked() -> None:
    with pytest.raises(InputError, match="temperature"):
        ReControlConfig(temperature=0)
    with pytest.raises(InputError, match="width"):
        ReControlConfig(width=0)
    with pytest.raises(InputError, match="eval_fraction"):
        ReControlConfig(eval_fraction=1.0)
    with pytest.raises(InputError, match="no trajectories"):
        ValueRun(ValueNet(8), _trajectories([1], [0.0]).subset([]), _trajectories([1], [0.0]), ReControlConfig(), Path("/nonexistent"), {})
