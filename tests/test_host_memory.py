"""keep_freed_memory: after it, a large block freed and allocated again faults no pages in (glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, ctypes.util, resource, sys
from jaxalign.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB)
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults[-1])
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_blocks_stay_mapped_only_when_kept():
    run = lambda mode: int(subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                                          check=True).stdout)
    default, kept = run("default"), run("keep")
    assert default > 10_000, default  # 16,384 pages of 4 KiB faulted in afresh every time
    assert kept < 100, kept


CLI = """
import sys
import jaxalign.host_memory as host_memory
calls = []
host_memory.keep_freed_memory = lambda: calls.append(1) or True
from jaxalign.cli import main
if sys.argv[2] == "after-numpy":
    import numpy  # noqa: F401
main([*sys.argv[1].split(), "plot", "/no/such/run"])
print(len(calls))
"""


@pytest.mark.parametrize("flags, when, calls", [("", "fresh", 1), ("--host-memory default", "fresh", 0),
                                                ("", "after-numpy", 0)])
def test_the_command_keeps_freed_memory_first_thing_unless_told_not_to(flags, when, calls):
    """``jaxalign`` sets it up before anything imports numpy; never in a process that already has
    (a test, a notebook calling ``main``), where it could no longer reach every thread."""
    out = subprocess.run([sys.executable, "-c", CLI, flags, when], capture_output=True, text=True, check=True).stdout
    assert int(out.split()[-1]) == calls
