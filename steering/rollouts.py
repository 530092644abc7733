"""RE-Control's training data: answers sampled from the local model with the hidden state that produced
each of their tokens, labelled by the reward model, and cached in the run folder.

The state recorded for answer token ``t`` is the input of the output head (the final-norm hidden state,
the one RE-Control edits) on the decode step that chose token ``t``: the prompt's last position for the
first token, then the position of token ``t − 1``; one state per generated token, the closing EOS
included. Answers are decoded by the project's decode loop (``middleware.decoding.Decoder``, the one
``LocalBackend`` runs, over the same chat-template prompt), several rows at once with left padding, each
row with its own generator seeded from (seed, prompt, sample), so a resumed or re-batched collection
draws the same answers. The reference (``get_activations_only.py``) samples with HF ``generate`` and
cuts the answers by matching a model-specific "Human:" marker; here the rows stop at EOS or the token
budget and the states of finished rows are never recorded.

Cache (``<run>/rollouts/``): ``identity.json`` (base model, collection settings, prompts' fingerprint),
then ``part-NNNNN.safetensors`` + ``part-NNNNN.json`` per group of prompts (the JSON, written last, marks a
part complete), and ``rewards.json`` (the judge's labels, reused when the judge is the same folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from middleware.checkpoints import write_json_atomic
from middleware.decoding import Decoder, Row
from middleware.distributed import current
from middleware.errors import CheckpointError, InputError
from middleware.evaluate.judges import JudgeLike, load_judge
from middleware.local import LocalBackend
from middleware.types import ChatRequest, Message

from .value import ReControlConfig, Trajectories

__all__ = ["Rollout", "collect_rollouts", "label_rollouts", "output_head", "record_head_inputs", "sample_rollouts"]

Prompt = Sequence[Message]


def output_head(model: Any) -> Any:
    """The output head (``get_output_embeddings()``) of a causal LM; ``InputError`` when it has none."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        raise InputError(f"{type(model).__name__} has no output head (get_output_embeddings() is None): RE-Control edits its input")
    return head


@contextlib.contextmanager
def record_head_inputs(model: Any) -> Iterator[list[Any]]:
    """Within the block, ``slot[0]`` is the head input at the last position of the latest forward call
    (``[batch, hidden]``, float32, CPU). The hook is removed on exit, also when the block raises."""
    slot: list[Any] = [None]

    def hook(module: Any, args: Any) -> None:
        slot[0] = args[0][:, -1, :].detach().float().cpu()

    handle = output_head(model).register_forward_pre_hook(hook)
    try:
        yield slot
    finally:
        handle.remove()


@dataclass
class Rollout:
    """One sampled answer: its prompt's index, sample number, text, finish reason, states ``[T, hidden]`` and
    token ids (the closing EOS not included: ``T`` is ``len(ids) + 1`` when the answer ended at EOS)."""

    prompt_index: int
    sample: int
    answer: str
    finish: str
    states: torch.Tensor
    ids: list[int] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        return {"prompt_index": self.prompt_index, "sample": self.sample, "answer": self.answer, "finish": self.finish,
                "length": len(self.states), "ids": self.ids}


def row_seed(seed: int, prompt_index: int, sample: int) -> int:
    return (seed * 1_000_003 + prompt_index * 1_009 + sample) % (2**63)


def sample_rollouts(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], *, samples: int, max_new_tokens: int, temperature: float | None,
    top_p: float | None = None, seed: int = 0, batch_size: int = 8, first_index: int = 0,
) -> list[Rollout]:
    """``samples`` answers to each prompt (``temperature`` ``None``/0: greedy), with their states.

    ``first_index`` is the index of ``prompts[0]`` in the whole prompt list (it enters the seeds).
    """
    backend = LocalBackend(model_obj=model, tokenizer=tokenizer)
    decoder = Decoder(model, tokenizer)
    jobs: list[tuple[int, int, list[int]]] = []
    for k, prompt in enumerate(prompts):
        ids = backend.prompt_ids(ChatRequest(messages=list(prompt)))
        jobs += [(first_index + k, s, ids) for s in range(samples)]
    jobs.sort(key=lambda j: len(j[2]))
    out: list[Rollout] = []
    for a in range(0, len(jobs), batch_size):
        chunk = jobs[a : a + batch_size]
        rows = [
            Row(prompt_ids=ids, max_new=max_new_tokens, temperature=temperature, top_p=top_p,
                seed=row_seed(seed, i, s) if temperature else None)
            for i, s, ids in chunk
        ]
        states: list[list[torch.Tensor]] = [[] for _ in rows]
        with record_head_inputs(model) as slot:
            running = [True] * len(rows)
            for _ in decoder.run(rows):
                for j, on in enumerate(running):
                    if on:
                        states[j].append(slot[0][j])
                running = [r.finish is None for r in rows]
        for (i, s, _), r, st in zip(chunk, rows, states):
            out.append(Rollout(i, s, r.text, r.finish or "length", torch.stack(st), list(r.ids)))
    out.sort(key=lambda r: (r.prompt_index, r.sample))
    return out


def _fingerprint(prompts: Sequence[Prompt]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([m.model_dump() for m in p], sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def collect_rollouts(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], folder: str | Path, cfg: ReControlConfig, *, base: str,
    progress: bool = True, prompts_per_part: int | None = None,
) -> list[dict[str, Any]]:
    """Sample ``cfg.samples_per_prompt`` answers to each prompt into ``folder`` (the cache), resuming a
    collection of the same base, settings and prompts from its last complete part; another one there is
    replaced. A part holds ``prompts_per_part`` prompts (default: about 64 answers). Returns the rollouts'
    metadata in order (prompt, then sample); states via ``load_states``."""
    folder = Path(folder)
    dist = current()
    if dist.is_main:
        _start_collection(folder, {"base": base, "collection": cfg.collection(), "prompts": _fingerprint(prompts),
                                   "n_prompts": len(prompts)})
    dist.barrier()
    per_part = prompts_per_part or max(1, 64 // cfg.samples_per_prompt)
    starts = list(range(0, len(prompts), per_part))
    bar = tqdm(total=len(prompts), desc="sampling answers", unit="prompt", disable=not (progress and dist.is_main))
    for part, a in enumerate(starts):
        done = folder / f"part-{part:05d}.json"
        if part % dist.world_size == dist.rank and not done.is_file():  # under accelerate launch: parts shared out
            rolls = sample_rollouts(
                model, tokenizer, prompts[a : a + per_part], samples=cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, batch_size=cfg.collect_batch_size, first_index=a,
            )
            save_file({"states": torch.cat([r.states for r in rolls]).to(torch.float16).contiguous()}, str(done.with_suffix(".safetensors")))
            write_json_atomic(done, [r.meta() for r in rolls])
        bar.update(min(per_part, len(prompts) - a))
    bar.close()
    dist.barrier()
    metas: list[dict[str, Any]] = []
    for part in range(len(starts)):
        metas += json.loads((folder / f"part-{part:05d}.json").read_text(encoding="utf-8"))
    return metas


def _start_collection(folder: Path, identity: dict[str, Any]) -> None:
    """Keep ``folder``'s parts when they were sampled for ``identity``; otherwise start it afresh."""
    ident_file = folder / "identity.json"
    if ident_file.is_file():
        try:
            same = json.loads(ident_file.read_text(encoding="utf-8")) == identity
        except json.JSONDecodeError:
            same = False
        if not same:
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(ident_file, identity)


def load_states(folder: str | Path, metas: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, list[int]]:
    """The cached states of ``folder`` (float16 ``[N, hidden]``) and the trajectories' offsets."""
    folder = Path(folder)
    parts = sorted(folder.glob("part-*.json"))
    try:
        states = torch.cat([load_file(str(p.with_suffix(".safetensors")))["states"] for p in parts])
    except Exception as e:
        raise CheckpointError(f"{folder}: cannot read the cached states ({e}); delete the folder to sample again") from None
    offsets = [0]
    for m in metas:
        offsets.append(offsets[-1] + int(m["length"]))
    if offsets[-1] != len(states):
        raise CheckpointError(f"{folder}: {len(states)} cached states for {offsets[-1]} answer tokens; delete the folder to sample again")
    return states, offsets


def label_rollouts(
    judge: JudgeLike, prompts: Sequence[Prompt], metas: Sequence[dict[str, Any]], folder: str | Path, *, progress: bool = True,
) -> list[float]:
    """The judge's reward of every rollout (cached in ``folder/rewards.json`` when the judge is a folder;
    under ``accelerate launch`` rank 0 then scores them while the others wait for the cache)."""
    key = str(Path(judge).resolve()) if isinstance(judge, (str, Path)) else None
    cache = Path(folder) / "rewards.json"
    answers = [m["answer"] for m in metas]
    digest = hashlib.sha256(json.dumps(answers).encode()).hexdigest()[:16]
    dist = current()
    if key is not None and dist.enabled:
        rewards = _score(judge, prompts, metas, cache, key, digest, progress=progress) if dist.is_main else None
        dist.barrier()
        rewards = rewards if rewards is not None else _cached(cache, key, digest)
        if rewards is None:
            raise CheckpointError(f"{cache}: the rewards rank 0 wrote are not there")
        return rewards
    return _score(judge, prompts, metas, cache, key, digest, progress=progress)


def _cached(cache: Path, key: str, digest: str) -> list[float] | None:
    if cache.is_file():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("judge") == key and saved.get("answers") == digest:
            return [float(r) for r in saved["rewards"]]
    return None


def _score(
    judge: JudgeLike, prompts: Sequence[Prompt], metas: Sequence[dict[str, Any]], cache: Path, key: str | None, digest: str,
    *, progress: bool,
) -> list[float]:
    if key is not None and (saved := _cached(cache, key, digest)) is not None:
        return saved
    scorer = load_judge(judge)
    items = [([m.model_dump() for m in prompts[m_["prompt_index"]]], m_["answer"]) for m_ in metas]
    takes_progress = "progress" in inspect.signature(scorer.score_batch).parameters
    rewards = [float(r) for r in scorer.score_batch(items, **({"progress": progress} if takes_progress else {}))]
    if key is not None:
        write_json_atomic(cache, {"judge": key, "answers": digest, "rewards": rewards})
    return rewards


def trajectories(folder: str | Path, metas: Sequence[dict[str, Any]], rewards: Sequence[float]) -> Trajectories:
    """The cached rollouts as ``Trajectories`` (grouped by prompt index)."""
    states, offsets = load_states(folder, metas)
    if any(int(m["length"]) < 1 for m in metas):
        raise CheckpointError(f"{folder}: a cached answer has no states")
    return Trajectories(states, offsets, torch.tensor(rewards, dtype=torch.float32), [int(m["prompt_index"]) for m in metas])
