"""``benchmarks/faults.py`` in small: requests through the server in front of an upstream that fails on
purpose in eleven ways; every request ends answered or with a clear error, none hung, lost, duplicated or
empty (the script exits 1 otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_request_ends_answered_or_with_a_clear_error_under_injected_faults() -> None:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "faults.py"), "--requests", "120", "--fault-rate", "0.5", "--seed", "3"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "must be 0: hung 0, lost 0, duplicated 0, empty-success 0, wrong-success 0" in proc.stdout
    injected = proc.stdout.split("faults injected: ")[1].split(" ")[0]
    assert int(injected) >= 40  # half of the attempts failed on purpose
