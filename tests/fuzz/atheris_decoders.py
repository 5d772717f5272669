"""Coverage-guided fuzzing (atheris/libFuzzer) of every decoder of network input.

Run by tests/fuzz/test_atheris.py in a subprocess, since libFuzzer ends the
process when it is done:

    python tests/fuzz/atheris_decoders.py -runs=20000 -max_total_time=20 CORPUS_DIR

The contract (DESIGN §2, STYLE 2): each decoder returns a value or raises a
RelayError subclass. Anything else escapes TestOneInput and libFuzzer reports
it as a crash (exit code non-zero, the input saved as crash-*). The relay
modules are instrumented so libFuzzer's coverage feedback steers the inputs
into their branches. The corpus directory is seeded with the golden vectors.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]

with atheris.instrument_imports():
    from relay.errors import RelayError
    from relay.protocol import httpsig
    from relay.protocol.batch import batch_ids, decode_batch, open_result
    from relay.protocol.certificate import open_certificate
    from relay.protocol.envelope import decode_header, open_envelope, peek_id
    from relay.protocol.keystr import parse_public_key, private_key_from_seed
    from relay.protocol.receipt import decode_receipt
    from relay.protocol.strict import pack, strict_unpack

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "relay-v1.json").read_text())
B_PUB = private_key_from_seed(bytes.fromhex(VECTORS["keys"]["b.test"]["seed_hex"])).public_key()
SIG = bytes.fromhex(VECTORS["envelope"]["signature_hex"])
PAYLOAD = bytes.fromhex(VECTORS["envelope"]["payload_hex"])


def golden() -> list[bytes]:
    """The vectors' blobs: a corpus to start from."""
    cert = bytes.fromhex(VECTORS["certificate"]["cert_bytes_hex"])
    return [
        bytes.fromhex(VECTORS["envelope"]["header_bytes_hex"]),
        bytes.fromhex(VECTORS["batch_request"]["body_hex"]),
        bytes.fromhex(VECTORS["batch_response"]["result_bytes_hex"]),
        bytes.fromhex(VECTORS["batch_response"]["body_hex"]),
        bytes.fromhex(VECTORS["receipt_payload_hex"]),
        cert,
        pack([cert, bytes.fromhex(VECTORS["certificate"]["signature_hex"])]),
        VECTORS["batch_request"]["signature_input"].encode(),
    ]


def signed_request(data: bytes) -> None:
    """Split `data` into the signature headers of a batch request and parse them."""
    fdp = atheris.FuzzedDataProvider(data)
    req = VECTORS["batch_request"]
    headers = {
        "Relay-Origin": req["relay_origin"],
        "Relay-Destination": req["relay_destination"],
        "Content-Digest": req["content_digest"],
        "Signature-Input": req["signature_input"],
        "Signature": req["signature"],
        "Relay-Certificate": VECTORS["batch_request_with_certificate"]["relay_certificate"],
    }
    name = fdp.PickValueInList(sorted(headers))
    headers[name] = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 400))
    httpsig.parse_request(method="POST", path="/federation/v1/batch", headers=headers)
    httpsig.check_content_digest(headers["Content-Digest"], fdp.ConsumeBytes(64))


DECODERS = (
    lambda d: strict_unpack(d, "fuzz"),
    decode_header,
    peek_id,
    lambda d: open_envelope(d, SIG, PAYLOAD),
    decode_receipt,
    lambda d: batch_ids(decode_batch(d)),
    lambda d: open_result(d, B_PUB),
    open_certificate,
    lambda d: parse_public_key(d.decode("latin-1")),
    signed_request,
)


def one_input(data: bytes) -> None:
    """Every decoder on `data`: a value or a RelayError, nothing else."""
    for decoder in DECODERS:
        with contextlib.suppress(RelayError):
            decoder(data)


def main() -> None:
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    for directory in corpus:
        for i, blob in enumerate(golden()):
            (Path(directory) / f"golden-{i}").write_bytes(blob)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
