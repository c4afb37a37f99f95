"""The agent frameworks, run on guarded clients against the fake OpenAI server.

A suite of its own (``tests_frameworks/``, CI's frameworks job): the frameworks are
test-only dependencies (``pip install -e '.[frameworks]'``, locked in
``.ci/requirements-frameworks.txt``), never guardrail's. Nothing here needs an API key or
reaches a provider: every client's ``base_url`` is the fake server's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from guardrail.testing import FakeOpenAIServer
from tests_frameworks._rig import TINY, Rig, make_rig

# Frameworks read the key at import or construction; a dummy keeps them off any real one.
os.environ["OPENAI_API_KEY"] = "sk-test-not-a-real-key"
os.environ.pop("OPENAI_BASE_URL", None)
os.environ.pop("OPENAI_ORG_ID", None)
# openai-agents would otherwise try to upload traces (the tests also disable them).
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake
    assert fake.errors == [], fake.errors


@pytest.fixture
def rig(server: FakeOpenAIServer) -> Rig:
    return make_rig(server)


@pytest.fixture
def capped(server: FakeOpenAIServer) -> Rig:
    return make_rig(server, TINY)
