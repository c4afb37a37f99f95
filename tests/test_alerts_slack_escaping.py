"""A caller's model name in a Slack alert's text is shown as it is: ``Webhook(slack=True)``
escapes ``&``, ``<`` and ``>`` as Slack asks, so ``<!channel>`` pings no one and
``<https://evil.example|Reset your key>`` is no link (model names are the caller's: an
unknown one is accepted and recorded as is; found by a review)."""

from __future__ import annotations

import json

import openai
import pytest

from guardrail import Alerts, BudgetExceeded, Guard, Policy
from guardrail.observe import AlertEvent, RefusalRule, Webhook


def test_a_model_name_cannot_mention_the_channel(server, clock) -> None:
    events: list[AlertEvent] = []
    alerts = Alerts([RefusalRule()], [events.append], backoff_seconds=0.0)
    guard = Guard(Policy(tokens_per_day=5, loop_limit=None), alerts=alerts, clock=clock)
    client = guard.wrap(openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0))
    with pytest.warns(UserWarning), pytest.raises(BudgetExceeded):
        client.for_tenant("u-1").chat.completions.create(
            model="<!channel> <https://evil.example|reset your API key>",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=50,
        )
    assert alerts.flush(10)
    alerts.close()
    (event,) = events
    text = json.loads(Webhook("https://hooks.slack.com/x", slack=True).body(event))["text"]
    assert "<!channel>" not in text, text
