from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import
sys.path.insert(0, str(Path(__file__).parent))

from fake_upstream import FakeOpenAI, cleared, serve_fake  # noqa: E402
from tiny import make_tiny_model_dir  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama checkpoint folder (hidden size 32), built once per test session."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found: the shared preference data sits beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def _upstream() -> Iterator[FakeOpenAI]:
    """The loopback OpenAI-compatible upstream (``tests/fake_upstream.py``), started once per test session."""
    with serve_fake() as fake:
        yield fake


@pytest.fixture
def server(_upstream: FakeOpenAI) -> FakeOpenAI:
    """The loopback upstream with no scripts and no recorded requests."""
    return cleared(_upstream)
