"""relay.policy.certs.format_ms: the one unix-ms-to-text the node's sentences use."""

from __future__ import annotations

import pytest

from relay.policy.certs import format_ms


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (5_000, "1970-01-01T00:00:05Z"),
        (1_700_000_000_999, "2023-11-14T22:13:20Z"),  # to the second, not rounded up
        (253_402_300_799_000, "9999-12-31T23:59:59Z"),
        (2**62, f"{2**62} ms"),  # past what a date can say: the number, not an error
    ],
)
def test_format_ms(ms: int, text: str) -> None:
    assert format_ms(ms) == text
