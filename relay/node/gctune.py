"""The garbage collector's settings for a serving node process.

A node allocates many short-lived objects per message (headers, records,
rows) and almost no reference cycles, while everything built at start-up
(config, policy tables, modules, the aiohttp app) lives as long as the
process. With CPython's defaults a node collects generation 0 every 700
net allocations and, from time to time, walks every one of those start-up
objects again in the older generations: about 5% of a node's CPU under
`relay bench --app` (measured with `gc.callbacks`: 18-21 µs per message
per node; docs/performance.md).

`settle_after_start` moves what start-up built to the permanent generation
(`gc.freeze`), so no collection walks it again, and collects the young
generation after 20,000 net allocations rather than 700. Cycles are still
collected, only less often; reference counting frees everything else at
once, as before.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000
OLDER_THRESHOLDS = (20, 20)


def settle_after_start() -> None:
    """Freeze the start-up heap and space collections out; call once the node serves."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
