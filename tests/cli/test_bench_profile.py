"""relay.cli.bench.profile: which py-spy samples count as busy, and where."""

from __future__ import annotations

import inspect
from pathlib import Path

from relay.cli.bench.profile import _pool_wait_line, summarize_profile


def test_a_thread_pool_worker_waiting_for_work_is_idle(tmp_path: Path) -> None:
    wait = _pool_wait_line()
    assert wait is not None
    import concurrent.futures.thread as pool

    lines, first = inspect.getsourcelines(pool._worker)
    assert "work_queue.get" in lines[wait - first]
    boot = "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982)"
    pool_frame = "_worker (/usr/lib/python3.11/concurrent/futures/thread.py"
    raw = tmp_path / "node.collapsed.txt"
    raw.write_text(
        f"{boot};{pool_frame}:{wait}) 7\n"
        f"{boot};{pool_frame}:{wait + 30});_WorkItem.run (x/concurrent/futures/thread.py:58);"
        "_commit (/site/relay/storage/sqlite/inline.py:80) 3\n"
        "main (/site/relay/cli/main.py:67);plan (/site/relay/node/submit.py:150) 5\n"
    )
    got = summarize_profile(raw)
    assert (got["busy_samples"], got["idle_samples"]) == (8, 7)
    assert got["threads"] == {
        "event loop": 62.5,
        "thread pool (COMMIT, judging large batches)": 37.5,
    }
    assert got["self"][0] == {"function": "plan (relay/node/submit.py)", "samples": 5, "pct": 62.5}
