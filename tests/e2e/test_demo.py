"""`relay demo --once`: the README's first command works as a new user sees it."""

from __future__ import annotations

import pytest

from tests.e2e.harness import relay

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_once_narrates_and_exits_zero() -> None:
    out = relay("demo", "--once", timeout=120)
    text = out.stdout
    assert "bob's inbox at ala: from alice@msk.demo.ru: 'Привет из Москвы'" in text
    assert "residency AM,BY,KG,KZ,RU" in text
    assert "msk now says: delivered." in text
    assert "rule no-transfer-to-de" in text
    assert "rule builtin:dest_jurisdiction" in text
    assert "Stopped every node." in text
