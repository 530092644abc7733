"""The real embedded model (SmolLM2-135M-Instruct) through a pipeline."""

from __future__ import annotations

import pytest


@pytest.mark.integration
def test_embedded_model_knows_the_capital_of_france() -> None:
    from middleware.local import LocalBackend
    from middleware.models import EMBEDDED_NAME
    from middleware.pipeline import Pipeline

    backend = LocalBackend()
    assert backend.name == EMBEDDED_NAME
    reply = Pipeline(backend).chat("What is the capital of France?", max_tokens=24)
    assert "paris" in reply.text.lower(), f"unexpected answer: {reply.text!r}"
    assert reply.model == EMBEDDED_NAME
    assert 0 < reply.usage.completion_tokens <= 24


@pytest.mark.integration
def test_gguf_conversion_is_cached_and_redone_when_damaged(tmp_path, monkeypatch) -> None:
    """A .gguf file converts once into a cached checkpoint; a truncated weight file, or another GGUF at the
    same path, converts again instead of failing on every load; the same file touched does not."""
    import os
    import shutil

    from middleware.models import embedded_gguf_path, load_causal_lm, resolve_model_path

    monkeypatch.setenv("ALIGNWARE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    shutil.copyfile(embedded_gguf_path(), gguf)
    out = resolve_model_path(gguf)
    weights = next(out.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert resolve_model_path(gguf) == out and weights.stat().st_mtime_ns == stamp  # cached: not converted again

    with weights.open("r+b") as f:
        f.truncate(1000)  # an interrupted copy, a full disk
    assert resolve_model_path(gguf) == out and weights.stat().st_size > 1000
    model, _ = load_causal_lm(gguf)
    assert model.config.num_hidden_layers > 0

    stamp = next(out.glob("*.safetensors")).stat().st_mtime_ns
    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**9))  # the same file, touched (copied again)
    resolve_model_path(gguf)
    assert next(out.glob("*.safetensors")).stat().st_mtime_ns == stamp  # same content: the conversion stands
    with gguf.open("ab") as f:
        f.write(b"\0" * 64)  # another file at the same path (GGUF readers go by offsets: it still loads)
    resolve_model_path(gguf)
    assert next(out.glob("*.safetensors")).stat().st_mtime_ns != stamp
