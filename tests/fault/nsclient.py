"""A client API caller that lives inside a network namespace.

Started as `ip netns exec NS python tests/fault/nsclient.py`, it reads one
JSON request per line on stdin (`{"method", "url", "token", "body", "key",
"timeout"}`) and writes one JSON answer per line on stdout: `{"status",
"body"}`, status 0 with `error` when no HTTP answer came back. The test in
the root namespace drives it through `tests.fault.netns.NsClient`.
"""

from __future__ import annotations

import http.client
import json
import sys
import urllib.error
import urllib.request
from typing import Any


def call(req: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {req['token']}"} if req.get("token") else {}
    data = None
    if req.get("body") is not None:
        data = json.dumps(req["body"]).encode()
        headers["Content-Type"] = "application/json"
    if req.get("key"):
        headers["Idempotency-Key"] = req["key"]
    r = urllib.request.Request(req["url"], data=data, headers=headers, method=req["method"])
    try:
        with urllib.request.urlopen(r, timeout=req.get("timeout", 30)) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    except (OSError, http.client.HTTPException) as e:
        return {"status": 0, "error": f"{type(e).__name__}: {e}"}
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return {"status": status, "body": body}


def main() -> None:
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(call(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
