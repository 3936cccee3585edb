"""Does RPS on a network namespace's loopback move UDP receive work to CPU 0? (the claim of bench/load.py --rps)

    python3 bench/rps_check.py          # root, iproute2; ~5 s; leaves the host's lo alone

Makes a namespace with lo up and, for rps_cpus = 1 (CPU 0) and 0 (off), runs inside it a receiver pinned to CPU 0
and a sender pinned to CPU 1 (200,000 x 1000-byte datagrams over 127.0.0.1), printing the NET_RX softirqs and the
softirq ticks (/proc/softirqs, /proc/stat; machine-wide, so run it on a quiet machine) per CPU over the transfer.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.proc_stats import net_rx_softirqs, softirq_ticks  # noqa: E402

COUNT = 200_000


def transfer() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    port = receiver.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {0})
        receiver.settimeout(1.0)
        n = 0
        try:
            while True:
                receiver.recv(2048)
                n += 1
        except socket.timeout:
            pass
        print(f"  received {n} of {COUNT}")
        os._exit(0)
    os.sched_setaffinity(0, {1})
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"x" * 1000
    rx0, si0 = net_rx_softirqs(), softirq_ticks()
    for i in range(COUNT):
        sender.sendto(payload, ("127.0.0.1", port))
        if i % 64 == 0:
            time.sleep(0)
    os.waitpid(pid, 0)
    rx1, si1 = net_rx_softirqs(), softirq_ticks()
    with open("/sys/class/net/lo/queues/rx-0/rps_cpus") as f:
        mask = f.read().strip()
    print(f"rps_cpus={mask}: NET_RX per CPU {[b - a for a, b in zip(rx0, rx1)]}, "
          f"softirq ticks per CPU {[b - a for a, b in zip(si0, si1)]}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        transfer()
        return 0
    name = f"whipgate-rpscheck-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        for mask in ("1", "0"):
            subprocess.run(["ip", "netns", "exec", name, "sh", "-c",
                            f"echo {mask} > /sys/class/net/lo/queues/rx-0/rps_cpus"], check=True)
            subprocess.run(["ip", "netns", "exec", name, sys.executable, os.path.abspath(__file__), "--inside"],
                           check=True)
    finally:
        subprocess.run(["ip", "netns", "del", name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
