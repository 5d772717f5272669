"""Prometheus text expositions of several workers as one node's. Pure.

Under `relay run --workers N` each worker renders its own metrics with a
`worker="I"` label on every series it counted itself (relay.node.metrics), and
its supervisor serves them merged: every family once, with each worker's
series. The gauges read from the shared database (queue depth, unread mail,
database size, node info) are the same whoever reads them, so they carry no
worker label and are taken from one worker only.

Only the text format 0.0.4 is handled: `# HELP` and `# TYPE` lines open a
family, and every sample line after them belongs to it.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def with_worker_label(text: str, worker: int, unlabelled: frozenset[str]) -> str:
    """`text` with `worker="WORKER"` first in the labels of every sample,
    except those of the families named in `unlabelled`."""
    out: list[str] = []
    family = ""
    for line in text.splitlines():
        if line.startswith("#"):
            family = _family_of(line) or family
            out.append(line)
            continue
        m = _NAME.match(line)
        if not line or m is None or family in unlabelled:
            out.append(line)
            continue
        name, rest = line[: m.end()], line[m.end() :]
        if rest.startswith("{}"):
            rest = rest[2:]
        if rest.startswith("{"):
            out.append(f'{name}{{worker="{worker}",{rest[1:]}')
        else:
            out.append(f'{name}{{worker="{worker}"}}{rest}')
    return "\n".join(out) + "\n"


def merge(texts: list[str], once: frozenset[str]) -> str:
    """One exposition of every family in `texts`, in order of first appearance.

    The samples of a family named in `once` come from the first text that has
    the family; every other family gets the samples of all texts.
    """
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    first: dict[str, int] = {}  # family -> index of the text it first appeared in
    for i, text in enumerate(texts):
        family = ""
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                name = _family_of(line)
                if name is None:
                    continue
                family = name
                first.setdefault(name, i)
                if line not in headers.setdefault(name, []):
                    headers[name].append(line)
                continue
            if family in once and first.get(family) != i:
                continue
            samples.setdefault(family, []).append(line)
    out: list[str] = []
    for name, lines in headers.items():
        out.extend(lines)
        out.extend(samples.get(name, []))
    return "\n".join(out) + "\n" if out else ""


def _family_of(comment: str) -> str | None:
    """The family a `# HELP name ...` or `# TYPE name ...` line opens, else None."""
    parts = comment.split(" ", 3)
    if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
        return parts[2]
    return None
