#!/usr/bin/env python3
"""Runs a `tally loadgen` command and reports the machine's busy CPU over its load window.

The window opens at the load generator's first progress line (setup done: accounts created and
funded) and closes at its last one; busy CPU is every core's user, nice, system, irq and softirq
time from /proc/stat over that window, so it counts the load generator and every node it started
(nothing else runs on the benchmark machine). Prints busy CPU seconds, the committed transfers of
the window (summed from the progress lines' committed/s), and CPU per committed transfer in µs.

Usage: scripts/cpu-per-transfer.py TALLY_BINARY loadgen ARGS...
"""
import os
import re
import subprocess
import sys
import time

PROGRESS = re.compile(r"\[\s*([0-9.]+) s\]\s+([0-9]+) committed/s")


def busy_seconds():
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    user, nice, system, idle, iowait, irq, softirq = map(int, fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def main():
    command = sys.argv[1:]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1)
    first = last = None
    committed = 0
    for line in process.stdout:
        sys.stdout.write(line)
        match = PROGRESS.search(line)
        if match:
            sample = (time.monotonic(), busy_seconds())
            if first is None:
                first = sample
            else:
                # Each progress line reports the second that just ended.
                committed += int(match.group(2))
            last = sample
    code = process.wait()
    if first is None or last is None or last is first:
        print("cpu-per-transfer: no load window seen", file=sys.stderr)
        return code or 1
    wall = last[0] - first[0]
    busy = last[1] - first[1]
    per_transfer_us = busy / committed * 1e6 if committed else float("nan")
    print(
        f"cpu-per-transfer: window {wall:.1f} s, busy CPU {busy:.1f} s "
        f"({busy / wall:.2f} cores), committed {committed}, "
        f"{per_transfer_us:.0f} µs CPU per committed transfer"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
