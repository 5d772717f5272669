"""py-spy profiles of the nodes and their summary by function."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from relay.cli.bench.cluster import Cluster
from relay.errors import RelayError
from relay.storage.sqlite.inspect import WORKER_THREAD_FUNCTION, worker_thread_lines

# --- profiling ----------------------------------------------------------------------


def start_profilers(cluster: Cluster, directory: Path) -> None:
    """Attach py-spy (100 Hz, Python frames with line numbers) to A and the first B."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise RelayError("--profile needs py-spy (pip install py-spy)")
    directory.mkdir(parents=True, exist_ok=True)
    for node in cluster.nodes[:2]:
        assert node.proc is not None
        out = directory / f"{node.name}.collapsed.txt"
        prof = subprocess.Popen(
            [exe, "record", "--pid", str(node.proc.pid), "--format", "raw", "--rate", "100",
             "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        cluster.profilers.append((node, prof, out))


IDLE_LEAVES = ("select (selectors.py)", "EpollSelector.select (selectors.py)")


def _pool_wait_line() -> int | None:
    """The line where a concurrent.futures worker thread waits for work (idle there)."""
    import concurrent.futures.thread as pool

    try:
        lines, first = inspect.getsourcelines(pool._worker)
    except (AttributeError, OSError, TypeError):
        return None
    for i, text in enumerate(lines, start=first):
        if "work_queue.get(block=True)" in text:
            return i
    return None


def _idle(frame: str, pool_wait: int | None) -> bool:
    """A thread pool worker (the writer's COMMIT thread, the judging threads) waiting."""
    return pool_wait is not None and frame.endswith(f"concurrent/futures/thread.py:{pool_wait})")


def _frame_name(frame: str, worker: dict[int, str]) -> str:
    """`fn (path/to/module.py:12)` -> `fn (module.py)`; aiosqlite's worker by line."""
    m = re.match(r"(.*) \((.*?)(?::(\d+))?\)$", frame)
    if not m:
        return frame
    func, path, line = m.group(1), m.group(2), m.group(3)
    if func == WORKER_THREAD_FUNCTION and line and int(line) in worker:
        return worker[int(line)]
    for marker in ("site-packages/", "/relay/", "lib/python3.11/", "lib/python3"):
        if marker in path:
            path = path.rpartition(marker)[2]
            if marker == "/relay/":
                path = "relay/" + path
            break
    return f"{func} ({path})"


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares of busy samples per function from py-spy's raw stacks.

    Samples whose innermost frame is waiting (epoll, aiosqlite's queue, a thread
    pool worker's queue) are idle: counted separately, not in the shares.
    """
    worker = worker_thread_lines()
    pool_wait = _pool_wait_line()
    self_n: Counter[str] = Counter()
    incl_n: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        names = [_frame_name(f, worker) for f in frames]
        if names[-1].startswith("idle") or names[-1] in IDLE_LEAVES or _idle(frames[-1], pool_wait):
            idle += count
            continue
        busy += count
        if "aiosqlite thread" in names[-1]:
            threads["aiosqlite thread"] += count
        elif any("concurrent/futures/thread.py" in f for f in frames):
            threads["thread pool (COMMIT, judging large batches)"] += count
        else:
            threads["event loop"] += count
        self_n[names[-1]] += count
        for name in set(names):
            if name.startswith("aiosqlite thread") or (
                name.endswith(".py)") and "relay/" in name and "__main__" not in name
                and not name.startswith(("main (", "cmd_run (", "run_node ("))
            ):  # fmt: skip
                incl_n[name] += count

    def table(c: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": k, "samples": v, "pct": round(100 * v / max(busy, 1), 1)}
            for k, v in c.most_common(top)
        ]

    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "threads": {k: round(100 * v / max(busy, 1), 1) for k, v in threads.most_common()},
        "self": table(self_n),
        "inclusive_relay": table(incl_n),
    }
