"""The peak resident set size of this process since its own exec, for the memory benchmarks' child interpreters.

getrusage(RUSAGE_SELF).ru_maxrss is not that on Linux: a child forked from a large parent (pytest, after the
benchmarks before it have loaded models) starts with the parent's pages mapped, and exec carries that high-water
mark over into the new program's ru_maxrss. Under `make bench` every child reported the same 8.4 GiB, the
parent's size. /proc/self/status's VmHWM belongs to the address space exec created, so it counts only what
the child itself touched; elsewhere (no /proc) getrusage is the fallback.
"""

from __future__ import annotations

import resource


def peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
