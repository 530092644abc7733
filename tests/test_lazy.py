"""``middleware.lazy``: names a package imports on first use, and the promise it keeps, that importing our
packages loads no heavy dependency."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from middleware.lazy import lazy_exports

HEAVY = ("torch", "transformers", "peft", "litellm", "matplotlib", "uvicorn")


def test_importing_the_packages_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, middleware, rewriters, judge, steering, middleware.evaluate, middleware.server, middleware.cli\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_lazy_name_is_imported_on_first_use_and_kept() -> None:
    namespace: dict[str, object] = {}
    getattr_, dir_ = lazy_exports("middleware", namespace, {"PipelineConfig": ".config"})
    assert "PipelineConfig" in dir_()
    from middleware.config import PipelineConfig

    assert getattr_("PipelineConfig") is PipelineConfig
    assert namespace["PipelineConfig"] is PipelineConfig
    with pytest.raises(AttributeError, match="'middleware' has no attribute 'Nope'"):
        getattr_("Nope")


def test_packages_export_their_lazy_names() -> None:
    import judge
    import middleware

    assert isinstance(judge, types.ModuleType) and "RewardModel" in dir(judge) and "LiteLLMBackend" in dir(middleware)
    assert middleware.LiteLLMBackend.__module__ == "middleware.remote"
    assert judge.RewardModel.__module__ == "judge.model"
    with pytest.raises(AttributeError):
        middleware.NoSuchThing  # noqa: B018
