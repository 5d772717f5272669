"""A lossy, slow link in user space, for kernels without `tc netem`.

Run inside the router namespace as `python linkemu.py DEV LOSS DELAY_MS SEED`.
It creates the TUN device DEV and prints `ready`; the test then routes every
packet the router forwards into DEV (policy routing on the incoming
interface). Each packet read from DEV is dropped with probability LOSS or
written back after DELAY_MS, and the kernel forwards it on by its main table.
On SIGTERM it prints its counts as one JSON line and exits.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
import signal
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


async def run(dev: str, loss: float, delay_s: float, seed: int) -> None:
    rng = random.Random(seed)
    fd = open_tun(dev)
    loop = asyncio.get_running_loop()
    counts = {"packets": 0, "dropped": 0, "forwarded": 0}

    def forward(packet: bytes) -> None:
        try:
            os.write(fd, packet)
            counts["forwarded"] += 1
        except OSError:
            counts["dropped"] += 1

    def readable() -> None:
        while True:
            try:
                packet = os.read(fd, 65536)
            except BlockingIOError:
                return
            counts["packets"] += 1
            if rng.random() < loss:
                counts["dropped"] += 1
            else:
                loop.call_later(delay_s, forward, packet)

    loop.add_reader(fd, readable)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    print(json.dumps(counts), flush=True)


def main() -> None:
    dev, loss, delay_ms, seed = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    asyncio.run(run(dev, loss, delay_ms / 1000, int(seed)))


if __name__ == "__main__":
    main()
