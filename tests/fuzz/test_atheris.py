"""A bounded atheris (libFuzzer) run over the decoders; see atheris_decoders.py.

Skipped, saying why, where atheris is not installed (it ships Linux x86_64
wheels only; `pip install -e '.[test]'` brings it there). The run is capped
by input count and time, and prints how many inputs libFuzzer tried.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

RUNS = 20_000
MAX_SECONDS = 25
SCRIPT = Path(__file__).with_name("atheris_decoders.py")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (pip install atheris; Linux x86_64 wheels only)",
)
def test_atheris_decoders(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    root = Path(__file__).parent.parent.parent
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            f"-runs={RUNS}",
            f"-max_total_time={MAX_SECONDS}",
            "-rss_limit_mb=1024",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS + 60,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    out = done.stdout + done.stderr
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("crash-"))
    assert done.returncode == 0 and not crashes, out[-4000:]
    m = re.search(r"Done (\d+) runs in (\d+) second", out)
    assert m is not None, out[-2000:]
    runs = int(m.group(1))
    line = f"atheris: {runs} inputs through 10 decoders in {m.group(2)} s, no crash"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)
    assert runs >= 1000, out[-2000:]
