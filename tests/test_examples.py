"""The examples run as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONPATH=str(ROOT))
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )


def test_quickstart_runs_local_and_litellm_pipelines(tiny_model_dir):
    proc = run_example("quickstart.py", "--model", str(tiny_model_dir), "--max-tokens", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert f"[{Path(tiny_model_dir).name}]" in out
    assert "[openai/gpt-4o-mini (mocked)] Paris is the capital of France." in out
    # both pipelines print their trace: the prompt stage modified the request, the response stage ran
    assert out.count("BeConcise") == 2 and out.count("StripWhitespace") == 2
    assert "modified" in out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wrap_openai_app_changes_only_base_url():
    """The existing app asks the loopback upstream directly, then through alignware: the upstream got
    the prompt stage's system message, and the response stage tidied the answer."""
    from fake_upstream import serve_fake

    with serve_fake() as fake:
        proc = run_example("wrap_openai_app.py", "--upstream", fake.base, "--model", "up", "--question", "Capital of France", timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        direct, wrapped = fake.requests
    assert "the app, direct:          echo: Capital of France\n" in proc.stdout
    assert "the app, through alignware: echo: Capital of France.\n" in proc.stdout
    assert [m["role"] for m in direct["messages"]] == ["user"]
    assert [m["role"] for m in wrapped["messages"]] == ["system", "user"] and wrapped["model"] == "up"


def test_serve_function_llm_answers_through_the_openai_client():
    proc = run_example("serve_function_llm.py", "--check", "--port", str(_free_port()), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "answer: Open Settings, choose Security, then Reset password."
    assert lines[1].split()[:2] == ["StripEmails", "modified"] and lines[2].split()[:2] == ["Polish", "modified"]
    assert lines[3] == "streamed: Open Settings, choose Security, then Reset password."


def test_yaml_chain_finds_the_stage_module_beside_it(tmp_path):
    """``type: my_stages:HouseStyle`` in examples/custom_stage/pipeline.yaml, run from another folder
    with no PYTHONPATH entry for it: the module beside the YAML is found."""
    config = ROOT / "examples" / "custom_stage" / "pipeline.yaml"
    env = dict(os.environ, HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONPATH=str(ROOT))
    env.pop("OPENAI_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "middleware.cli", "chat", "How do I reset my password?", "--pipeline", str(config), "--trace"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Open Settings, then Security, then Reset password.\n-- the help desk" in proc.stdout
    assert "HouseStyle" in proc.stdout and "SignOff" in proc.stdout

    from middleware import load_pipeline

    pipe = load_pipeline(config)
    assert [s.name for s in pipe.stages] == ["HouseStyle", "SignOff"]
    chunks = list(pipe.stream("How do I reset my password?"))
    assert "".join(c.delta for c in chunks).endswith("\n-- the help desk")
    assert chunks[-1].trace[0].after == "How do I reset my password? Answer in one sentence."
