"""`relay send`, `relay inbox`, `relay status`: the client API from a shell.

`--node` defaults to RELAY_URL, `--ca-file` to RELAY_CA_FILE: an https node
is verified against those CAs only, else against the system's (never
unverified). The mailbox token comes from RELAY_TOKEN or `--token-file PATH`
(a file only its owner can read, holding the token and at most one trailing
newline); `--token TOKEN` still works but puts the token in the process list
(/proc/PID/cmdline), where every local user can read it. Results go to
stdout, messages to stderr. Exit codes (relay.cli.main): 3 for a policy
refusal, and for `status` a recipient rejected or expired; 4 for `status`
while a recipient's status is not final; 5 when the node does not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import stat
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from relay.cli.main import EXIT_OK, EXIT_PENDING, EXIT_POLICY
from relay.config.tls import client_context
from relay.errors import PolicyRefused, RelayError, Unavailable, Unreachable, UsageError


class ApiError(RelayError):
    """The node answered with an error document: its detail first, then the
    HTTP status and code, and what to check when the token was refused."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        hint = ""
        if status == 401:
            hint = "; check RELAY_TOKEN or --token-file: the token `relay mailbox add` printed"
        super().__init__(f"{detail} (HTTP {status}{' ' + code if code else ''}){hint}")
        self.http_status = status


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--node",
        default=os.environ.get("RELAY_URL"),
        help="the node's URL, http://HOST:PORT or https://... (RELAY_URL)",
    )
    token = p.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="read the mailbox token from PATH (mode 0600); default: the RELAY_TOKEN variable",
    )
    token.add_argument(
        "--token",
        default=os.environ.get("RELAY_TOKEN"),
        help="the mailbox token itself; other local users can read it in the process list,"
        " so prefer RELAY_TOKEN or --token-file",
    )
    p.add_argument(
        "--ca-file",
        default=os.environ.get("RELAY_CA_FILE") or None,
        type=Path,
        metavar="PEM",
        help="CA certificates to verify an https node with (RELAY_CA_FILE); default: the system's",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("send", help="send a message; prints its id")
    _common(p)
    p.add_argument(
        "--to",
        nargs="+",
        action="extend",
        required=True,
        metavar="ADDR",
        help="recipient addresses (--to A B, or --to A --to B)",
    )
    p.add_argument("--residency", help="comma-separated country codes or groups, e.g. RU,KZ")
    p.add_argument("--text", help="message text (read from stdin when absent)")
    p.add_argument("--ctype", help="content type of the payload")
    p.add_argument(
        "--ttl", type=_count(1, None), metavar="S", help="seconds before the message expires"
    )
    p.add_argument("--idempotency-key", help="retrying with the same key returns the first id")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("inbox", help="print messages waiting in the mailbox")
    _common(p)
    p.add_argument(
        "--wait", type=_count(0, 60), default=0, metavar="S", help="long-poll up to S seconds"
    )
    p.add_argument(
        "--limit", type=_count(1, 1000), default=100, metavar="N", help="at most N messages"
    )
    p.add_argument("--ack", action="store_true", help="acknowledge what was printed")
    p.add_argument("--json", action="store_true", help="JSON Lines, one message a line")
    p.set_defaults(func=cmd_inbox)

    p = sub.add_parser("status", help="per-recipient status of a message")
    _common(p)
    p.add_argument("id", type=_message_id, help="message id, as relay send printed it")
    p.add_argument("--json", action="store_true", help="print the status document as JSON")
    p.set_defaults(func=cmd_status)


def _count(low: int, high: int | None) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high` (no upper bound if None)."""

    def convert(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if n < low or (high is not None and n > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"{n} is out of range: give {bounds}")
        return n

    return convert


def _message_id(value: str) -> str:
    text = value.strip().lower()
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a message id: ids are 32 hex digits, as `relay send` prints them"
        )
    return text


def node_url(value: str) -> str:
    """`value` as a node URL without a trailing slash; UsageError says what is wrong."""
    url = value.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            f"--node {value!r} is not a node URL: it needs http:// or https://,"
            f" e.g. http://{value if '://' not in value else 'HOST:PORT'}"
        )
    if parts.query or parts.fragment:
        raise UsageError(f"--node {value!r}: a node URL has no ?query or #fragment")
    return url


def _need(args: argparse.Namespace) -> tuple[str, str, ssl.SSLContext]:
    if not args.node:
        raise UsageError("give --node URL or set RELAY_URL (e.g. http://127.0.0.1:8701)")
    node = node_url(str(args.node))
    token = read_token_file(args.token_file) if args.token_file else args.token
    if not token:
        raise UsageError("set RELAY_TOKEN or give --token-file PATH")
    tls = client_context(args.ca_file)  # TLSFileError names a bad --ca-file
    return node, str(token), tls


MAX_TOKEN_FILE = 4096


def read_token_file(path: Path) -> str:
    """The token in `path`: its text without one trailing newline.

    The file must be a regular file that neither group nor others can
    access (like node.key); UsageError says what is wrong with it.
    """
    where = f"--token-file {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"{where}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{where}: not a regular file")
        if st.st_mode & 0o077:
            raise UsageError(
                f"{where}: accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o});"
                f" run: chmod 600 {path}"
            )
        data = os.read(fd, MAX_TOKEN_FILE + 1)
    except OSError as e:
        raise UsageError(f"{where}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE:
        raise UsageError(f"{where}: over {MAX_TOKEN_FILE} bytes; it should hold the token alone")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise UsageError(f"{where}: the file is empty")
    if any(c < " " or c == "\x7f" for c in text):
        raise UsageError(f"{where}: holds more than one line or a control character")
    return text


async def _call(
    method: str,
    url: str,
    token: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
    *,
    tls: ssl.SSLContext,
) -> Any:
    hdrs = {"Authorization": f"Bearer {token}", **(headers or {})}
    try:
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout),
                connector=aiohttp.TCPConnector(ssl=tls),
            ) as s,
            s.request(method, url, json=body, headers=hdrs, allow_redirects=False) as resp,
        ):
            text = await resp.text()
            status = resp.status
    except aiohttp.ClientConnectorCertificateError as e:
        raise Unavailable(
            f"{_origin(url)}: its TLS certificate is not trusted: {e.certificate_error}"
        ) from None
    except aiohttp.ClientConnectorError as e:
        err = e.os_error
        why = os.strerror(err.errno) if err.errno and err.errno > 0 else str(err.strerror or err)
        raise Unreachable(
            f"cannot reach the node at {_origin(url)}: {why}"
            " (is it running, and is this its [node] listen or public_url?)"
        ) from None
    except TimeoutError:
        raise Unreachable(
            f"no answer from the node at {_origin(url)} within {timeout:g} s"
        ) from None
    except (aiohttp.ClientError, OSError) as e:
        raise Unavailable(f"{_origin(url)}: {type(e).__name__}: {e}") from None
    try:
        doc = json.loads(text) if text else {}
    except ValueError:
        doc = {"error": "", "detail": text[:300]}
    if status >= 400:
        code = str(doc.get("error", "")) if isinstance(doc, dict) else ""
        detail = str(doc.get("detail", text[:300])) if isinstance(doc, dict) else text[:300]
        if status == 422:
            rule = str(doc.get("rule", "")) if isinstance(doc, dict) else ""
            raise PolicyRefused(f"{detail} (rule {rule})" if rule else detail, rule)
        raise ApiError(status, code, detail)
    return doc


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def cmd_send(args: argparse.Namespace) -> int:
    node, token, tls = _need(args)
    if args.text is not None:
        text = args.text
    else:
        if sys.stdin.isatty():
            _say("reading the message from stdin; end it with Ctrl-D (or give --text)")
        text = sys.stdin.read()
        if not text:
            raise UsageError(
                "stdin was empty: nothing to send (give --text, or pipe the message in)"
            )
    msg: dict[str, Any] = {"to": args.to, "text": text}
    if args.residency:
        msg["residency"] = [c.strip() for c in args.residency.split(",") if c.strip()]
    if args.ctype:
        msg["ctype"] = args.ctype
    if args.ttl is not None:
        msg["ttl"] = args.ttl
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    doc = asyncio.run(_call("POST", f"{node}/v1/messages", token, msg, headers, tls=tls))
    print(doc["id"])
    return 0


async def read_inbox(
    node: str, token: str, wait: int, limit: int, tls: ssl.SSLContext
) -> list[dict[str, Any]]:
    """Up to `limit` messages, page after page: a page may stop early at the node's byte budget."""
    messages: list[dict[str, Any]] = []
    after = 0
    while len(messages) < limit:
        url = f"{node}/v1/inbox?wait={wait}&limit={limit - len(messages)}&after={after}"
        doc = await _call("GET", url, token, timeout=wait + 30, tls=tls)
        messages.extend(doc.get("messages", []))
        if not doc.get("more") or "next" not in doc:
            break
        after, wait = int(doc["next"]), 0
    return messages


def cmd_inbox(args: argparse.Namespace) -> int:
    node, token, tls = _need(args)
    messages = asyncio.run(read_inbox(node, token, args.wait, args.limit, tls))
    for m in messages:
        if args.json:
            print(json.dumps(m, ensure_ascii=False))
        else:
            body = m.get("text", f"<{len(m.get('body_b64', ''))} base64 chars of {m.get('ctype')}>")
            if m.get("event") == "message.erased":
                body = "<erased by its sender>"
            print(f"{m['id']} from {m['from']} to {','.join(m['to'])}: {body}")
    if args.ack and messages:
        asyncio.run(
            _call(
                "POST",
                f"{node}/v1/inbox/ack",
                token,
                {"ids": [m["id"] for m in messages]},
                tls=tls,
            )
        )
        print(f"acknowledged {len(messages)} message(s)", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    node, token, tls = _need(args)
    doc = asyncio.run(_call("GET", f"{node}/v1/messages/{args.id}", token, tls=tls))
    recipients: dict[str, dict[str, Any]] = doc.get("recipients", {})
    if args.json:
        print(json.dumps(doc, ensure_ascii=False))
    else:
        for addr, st in sorted(recipients.items()):
            reason = f" ({st['reason']})" if st.get("reason") else ""
            print(f"{addr}: {st['status']}{reason}")
        for env in doc.get("erasure", []):
            print(f"erasure of {env['id']} (to {env['dest']}):")
            for n in env["nodes"]:
                print(f"  {n['node']}: {_erasure_state(n)}")
    return status_exit_code([str(st.get("status", "")) for st in recipients.values()])


FINAL_FAILED = frozenset({"rejected", "expired"})


def status_exit_code(statuses: list[str]) -> int:
    """`relay status`'s exit code: 4 (pending) while any recipient's status is
    not final, else 3 if any was rejected or expired, else 0 (all delivered)."""
    if any(s != "delivered" and s not in FINAL_FAILED for s in statuses):
        return EXIT_PENDING
    if any(s in FINAL_FAILED for s in statuses):
        return EXIT_POLICY
    return EXIT_OK


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _erasure_state(n: dict[str, Any]) -> str:
    """One node's answer to an erasure, as `relay status` prints it."""
    status = str(n["status"])
    if status == "held":
        until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(n["hold_until"] / 1000))
        return f"held until {until} ({n['rule']})"
    if status == "erased":
        return "erased " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(n["at"] / 1000))
    if status == "unknown":
        return "no copy held"
    return f"{status} ({n['detail']})" if n.get("detail") else status
