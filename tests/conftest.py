"""Shared fixtures: one model cache for the whole session, so the tiny random Llama and the
converted GGUF checkpoint are built once (they need the GGUF tokenizer, ~15 s on 2 cores)."""
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    saved = os.environ.get("LDYN_CACHE")
    path = os.environ.get("LDYN_TEST_CACHE") or str(tmp_path_factory.mktemp("ldyn-cache"))
    os.environ["LDYN_CACHE"] = path
    yield path
    if saved is None:
        os.environ.pop("LDYN_CACHE", None)
    else:
        os.environ["LDYN_CACHE"] = saved
