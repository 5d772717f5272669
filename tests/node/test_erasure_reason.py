"""relay.node.erasure.check_reason: a reason the API takes always fits the erasure
request that carries it to every node of the path (relay.protocol.erasure)."""

from __future__ import annotations

import pytest

from relay.errors import BadRequest
from relay.node.erasure import check_reason
from relay.protocol.erasure import MAX_REASON_BYTES, ErasureRequest, encode_request


@pytest.mark.parametrize(
    "reason",
    ["a" * MAX_REASON_BYTES, "é" * (MAX_REASON_BYTES // 2), "court order 7"],
)
def test_a_reason_taken_is_one_a_request_can_carry(reason: str) -> None:
    taken = check_reason(reason, required=True)
    encode_request(ErasureRequest(bytes(16), "admin", taken, 1))


@pytest.mark.parametrize(
    "reason",
    [
        "a" * (MAX_REASON_BYTES + 1),
        "漢" * 200,  # 200 characters, 600 bytes: the request would refuse it mid-erasure
        "two\nlines",
        "   ",
    ],
)
def test_a_reason_a_request_cannot_carry_is_refused_up_front(reason: str) -> None:
    with pytest.raises(BadRequest):
        check_reason(reason, required=True)
