"""The SFT trainer under ``accelerate launch --multi_gpu --num_processes 2`` on the CPU (gloo): the same adapter as one
process with the same global batch, and a 2-process run stopped part-way resumed in 1 process; and the
pieces of ``middleware.distributed`` a single process uses.

The two-process runs are this file run as a script by accelerate's launcher (``main`` below) in a
subprocess; the single-process runs are in the test process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script by the launcher: import this checkout's packages

from middleware.distributed import SINGLE, Dist, current  # noqa: E402
from middleware.dpo import train_dpo  # noqa: E402
from middleware.dpo_data import DPOExample  # noqa: E402
from middleware.sft import train_sft  # noqa: E402
from middleware.sft_data import SFTConfig, SFTExample  # noqa: E402

STOP_AT = 3  # the 2-process run that is resumed in 1 process stops after this step


def _examples() -> list[SFTExample]:
    return [SFTExample(f"question number {i} about dogs and {'cats ' * (i % 4)}", f"answer {i}: woof" + "!" * (i % 3)) for i in range(20)]


def _pairs() -> list[DPOExample]:
    return [DPOExample(f"question {i} about {'cats ' * (i % 3)}dogs", f"a kind answer {i}", "go away" + "!" * (i % 4), group=i)
            for i in range(18)]


def _config(model_dir: str) -> SFTConfig:
    # batch 5 over 16 training rows: the last batch of an epoch has one row, so one process gets none
    return SFTConfig(base_model=model_dir, kind="rewriter", lora_r=4, lora_alpha=16, lora_dropout=0.0, learning_rate=1e-2,
                     epochs=2, batch_size=5, eval_fraction=0.2, eval_every=3, save_every=2, seed=3)


def _tensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _assert_close(a: Path, b: Path) -> None:
    import torch

    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        assert torch.allclose(ta[k], tb[k], rtol=1e-4, atol=1e-5), (k, float((ta[k] - tb[k]).abs().max()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(model_dir: str, out: str) -> None:
    """Run by each launched process: a whole run into ``out/full2`` and one stopped after ``STOP_AT``
    steps into ``out/cut2``."""
    dist = current()
    assert dist.world_size == 2, dist
    cfg = _config(model_dir)
    res = train_sft(_examples(), cfg, Path(out) / "full2", progress=False)
    (Path(out) / f"rank{dist.rank}.txt").write_text(f"{res.steps} {res.eval_loss_final!r} {res.history[-2]['loss']!r}")
    train_sft(_examples(), cfg, Path(out) / "cut2", progress=False, callback=lambda row: row["step"] < STOP_AT)
    scored = _count_training_pairs()
    dpo = train_dpo(_pairs(), cfg, Path(out) / "dpo2", progress=False)
    (Path(out) / f"dpo_rank{dist.rank}.txt").write_text(repr([[r["loss"] for r in dpo.history if "loss" in r], sum(scored)]))
    judged = _count_judged_pairs()
    rm = _train_judge(model_dir, Path(out) / "judge2")
    (Path(out) / f"judge_rank{dist.rank}.txt").write_text(repr([[r["loss"] for r in rm.history if "loss" in r], sum(judged)]))
    fitted = _count_fit_items()
    rahf = _train_rahf(model_dir, Path(out) / "rahf2")
    (Path(out) / f"rahf_rank{dist.rank}.txt").write_text(repr([[r["loss"] for r in rahf.history if "loss" in r], sum(fitted)]))
    sampled = _count_sampled_parts()
    _train_recontrol(model_dir, Path(out) / "rc2", judge=Path(out) / "judge2")
    (Path(out) / f"rc_rank{dist.rank}.txt").write_text(repr(sum(sampled)))


def _train_recontrol(model_dir: str, out: Path, judge: Path) -> Any:
    from judge_pairs import toy_pairs
    from steering.recontrol import train_recontrol
    from steering.value import ReControlConfig

    # 16 answers a prompt: 4 prompts a part, so the 8 prompts make two parts, one for each process
    cfg = ReControlConfig(samples_per_prompt=16, max_new_tokens=3, width=16, depth=1, max_steps=6, batch_size=8, save_every=3,
                          eval_fraction=0.25, steps=2, step_size=0.5, max_edit_norm=1.0)
    return train_recontrol(toy_pairs(8), out, cfg, judge=judge, base=Path(model_dir), progress=False, device="cpu")


def _count_sampled_parts() -> list[int]:
    """Record each part of the rollouts this process samples."""
    from steering import rollouts

    seen: list[int] = []
    sample = rollouts.sample_rollouts

    def counting(*args: Any, **kwargs: Any) -> Any:
        seen.append(1)
        return sample(*args, **kwargs)

    rollouts.sample_rollouts = counting  # type: ignore[assignment]
    return seen


def _train_rahf(model_dir: str, out: Path) -> Any:
    from middleware.types import PreferencePair
    from steering.rahf import RAHFConfig
    from steering.rahf_train import train_rahf

    pairs = [PreferencePair(prompt=f"question {i} about cats", chosen=f"a kind answer number {i}.", rejected=f"go away {i}")
             for i in range(9)]
    config = RAHFConfig(base_model=model_dir, lora_r=4, lora_alpha=8, lora_dropout=0.0, batch_size=5, epochs=2, sft_epochs=1,
                        eval_fraction=0.25, alpha=4.0, learning_rate=1e-2, save_every=2, layers=(0, 1))
    return train_rahf(pairs, out, config, progress=False)


def _count_fit_items() -> list[int]:
    """Record how many items each step of the RAHF fit scores (through ``fit_batch``)."""
    from steering import rahf_train

    seen: list[int] = []
    fit_batch = rahf_train.fit_batch

    def counting(items: Any, idx: list[int], *rest: Any) -> Any:
        seen.append(len(idx))
        return fit_batch(items, idx, *rest)

    rahf_train.fit_batch = counting  # type: ignore[assignment]
    return seen


def _train_judge(model_dir: str, out: Path) -> Any:
    from judge import TrainConfig, train_reward_model
    from judge_pairs import cfg, toy_pairs

    # batch 5 over 14 training pairs: the last batch of an epoch has 4, so the processes get 2 each
    train = TrainConfig(epochs=2, batch_size=5, learning_rate=3e-3, eval_fraction=0.2, save_every=2, seed=1)
    return train_reward_model(toy_pairs(18), out, cfg(Path(model_dir), train="lora", train_layers=1), train, progress=False)


def _count_judged_pairs() -> list[int]:
    """Record how many pairs each training step of the reward trainer scores."""
    from judge import train as judge_train

    seen: list[int] = []
    rewards_for = judge_train._RewardRun.rewards_for

    def counting(self: Any, idx: list[int]) -> Any:
        seen.append(len(idx))
        return rewards_for(self, idx)

    judge_train._RewardRun.rewards_for = counting  # type: ignore[method-assign]
    return seen


def _count_training_pairs() -> list[int]:
    """Record how many pairs each training forward pass of the DPO objective scores (held-out passes,
    in eval mode, are left out)."""
    from middleware import dpo

    seen: list[int] = []
    score = dpo._Objective.__call__

    def counting(self: Any, idx: list[int]) -> Any:
        if self.scorer.model.training:
            seen.append(len(idx))
        return score(self, idx)

    dpo._Objective.__call__ = counting  # type: ignore[method-assign]
    return seen


@pytest.fixture(scope="module")
def two_process_runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    # accelerate's ``--cpu`` starts several processes only through mpirun; ``--multi_gpu`` starts them with
    # torch.distributed.run, and ACCELERATE_USE_CPU keeps them on the CPU (gloo) even where a GPU is present
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
           "--main_process_port", str(_free_port()), __file__, str(tiny_model_dir), str(out)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def one_process_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("single") / "full1"
    return out, train_sft(_examples(), _config(str(tiny_model_dir)), out, progress=False)


def test_two_processes_train_the_weights_of_one(two_process_runs: Path, one_process_run: tuple[Path, Any]) -> None:
    full1, one = one_process_run
    _assert_close(two_process_runs / "full2", full1)
    # both ranks returned the same result, which is the single process's (global loss, all steps)
    ranks = [(two_process_runs / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert int(ranks[0][0]) == one.steps == 8
    assert float(ranks[0][1]) == pytest.approx(one.eval_loss_final, rel=1e-5)
    # rank 0 alone wrote the files: one set of checkpoints, no stray temporary folders
    names = sorted(p.name for p in (two_process_runs / "full2").iterdir())
    assert names == sorted(["adapter_config.json", "adapter_model.safetensors", "alignware.json", "checkpoints", "history.json", "loss.png"])


def test_a_two_process_run_resumes_in_one_process(
    two_process_runs: Path, one_process_run: tuple[Path, Any], tiny_model_dir: Path
) -> None:
    cut = two_process_runs / "cut2"
    assert (cut / "checkpoints" / f"step-{STOP_AT:07d}").is_dir()
    stopped = _tensors(cut)  # the adapter the stopped 2-process run wrote
    resumed = train_sft(_examples(), _config(str(tiny_model_dir)), cut, progress=False)
    assert resumed.resumed_from == STOP_AT and resumed.steps == 8
    _assert_close(cut, one_process_run[0])
    assert any(not (stopped[k] == v).all() for k, v in _tensors(cut).items())  # the resumed run trained on


def test_two_processes_train_the_dpo_weights_of_one(
    two_process_runs: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ast

    from middleware import dpo

    monkeypatch.setattr(dpo._Objective, "__call__", dpo._Objective.__call__)  # restored after the test
    scored = _count_training_pairs()
    one = train_dpo(_pairs(), _config(str(tiny_model_dir)), tmp_path / "dpo1", progress=False)
    _assert_close(two_process_runs / "dpo2", tmp_path / "dpo1")
    (loss0, scored0), (loss1, scored1) = (ast.literal_eval((two_process_runs / f"dpo_rank{r}.txt").read_text()) for r in (0, 1))
    # every rank logged the whole batch's loss, step by step: the single process's
    assert loss0 == loss1 == pytest.approx([r["loss"] for r in one.history if "loss" in r], rel=1e-4)
    # and each scored only its share of the training pairs: together, what the single process scored
    assert scored0 + scored1 == sum(scored) and 0 < scored0 < sum(scored) and 0 < scored1 < sum(scored)


def test_two_processes_train_the_reward_model_of_one(
    two_process_runs: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ast

    import torch

    from judge import RewardModel
    from judge import train as judge_train

    monkeypatch.setattr(judge_train._RewardRun, "rewards_for", judge_train._RewardRun.rewards_for)  # restored after
    judged = _count_judged_pairs()
    one = _train_judge(str(tiny_model_dir), tmp_path / "judge1")
    two, single = RewardModel.load(two_process_runs / "judge2"), RewardModel.load(tmp_path / "judge1")
    a, b = two.trainable_state(), single.trainable_state()
    assert a.keys() == b.keys() and a
    # The head's bias adds the same to both rewards of a pair, so its true gradient is zero; what its summed
    # gradient holds is float noise, which Adam scales into steps of its own, differently per summation order.
    # It moves no margin: compare the margins instead.
    for k in a.keys() - {"head.bias"}:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), (k, float((a[k] - b[k]).abs().max()))
    from judge_pairs import toy_pairs

    assert two.pair_margins(toy_pairs(18)) == pytest.approx(single.pair_margins(toy_pairs(18)), rel=1e-4, abs=1e-5)
    (loss0, judged0), (loss1, judged1) = (ast.literal_eval((two_process_runs / f"judge_rank{r}.txt").read_text()) for r in (0, 1))
    assert loss0 == pytest.approx([r["loss"] for r in one.history if "loss" in r], rel=1e-4)
    assert judged0 + judged1 == sum(judged) and 0 < judged0 < sum(judged) and 0 < judged1 < sum(judged)
    names = sorted(p.name for p in (two_process_runs / "judge2").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "judge1").iterdir())


def test_two_processes_fit_the_rahf_adapter_of_one(
    two_process_runs: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ast

    from steering import rahf_train

    monkeypatch.setattr(rahf_train, "fit_batch", rahf_train.fit_batch)  # restored after the test
    fitted = _count_fit_items()
    one = _train_rahf(str(tiny_model_dir), tmp_path / "rahf1")
    _assert_close(two_process_runs / "rahf2" / "adapter", tmp_path / "rahf1" / "adapter")
    (loss0, fitted0), (loss1, fitted1) = (ast.literal_eval((two_process_runs / f"rahf_rank{r}.txt").read_text()) for r in (0, 1))
    assert loss0 == loss1 == pytest.approx([r["loss"] for r in one.history if "loss" in r], rel=1e-4)
    # held-out evaluations score every held-out item on every process; the fit's steps are shared out
    assert fitted0 + fitted1 > sum(fitted) and fitted0 < sum(fitted) and fitted1 < sum(fitted)
    assert (two_process_runs / "rahf2" / "merged").is_dir()


def test_two_processes_share_out_recontrol_sampling_and_train_the_value_net_of_one(
    two_process_runs: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ast
    import json

    from steering import rollouts

    monkeypatch.setattr(rollouts, "sample_rollouts", rollouts.sample_rollouts)  # restored after the test
    sampled = _count_sampled_parts()
    one = _train_recontrol(str(tiny_model_dir), tmp_path / "rc1", judge=two_process_runs / "judge2")
    two = two_process_runs / "rc2"
    for part in ("part-00000.json", "part-00001.json"):  # the same answers, each sampled by one process
        assert json.loads((two / "rollouts" / part).read_text()) == json.loads((tmp_path / "rc1" / "rollouts" / part).read_text())
    # rank 0's judge scores, equal up to float rounding (the launched processes run one thread each)
    r2, r1 = (json.loads((d / "rollouts" / "rewards.json").read_text())["rewards"] for d in (two, tmp_path / "rc1"))
    assert r2 == pytest.approx(r1, rel=1e-5, abs=1e-6)
    a, b = _tensors_of(two / "value.safetensors"), _tensors_of(tmp_path / "rc1" / "value.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-4, k
    assert one.finished and sum(sampled) == 2
    assert [ast.literal_eval((two_process_runs / f"rc_rank{r}.txt").read_text()) for r in (0, 1)] == [1, 1]


def _tensors_of(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_shards_split_a_batch_between_ranks() -> None:
    items = list(range(7))
    parts = [Dist(rank=r, world_size=3).shard(items) for r in range(3)]
    assert sum(parts, []) == items and sorted(len(p) for p in parts) == [2, 2, 3]
    assert [Dist(rank=r, world_size=2).shard([9]) for r in range(2)] == [[], [9]]
    assert SINGLE.shard(items) == items and SINGLE.sum([1, 2.5]) == [1.0, 2.5]


def test_a_single_process_does_not_load_accelerate() -> None:
    code = "import sys, middleware.sft, middleware.distributed as d; assert d.current() is d.SINGLE; print('accelerate' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=str(ROOT)), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
