#!/usr/bin/env python3
"""Heap allocations per request from callgrind output files: the calls made to mimalloc's entry
points for Rust's global allocator (mi_malloc_aligned: alloc, mi_zalloc_aligned: alloc_zeroed,
mi_realloc_aligned: realloc), counted from the call records callgrind keeps, divided by N.

usage: callgrind-allocs.py N FILE...
"""
import re
import sys

ENTRY = {"mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned", "mi_malloc", "mi_zalloc", "mi_realloc"}
n = int(sys.argv[1])
names = {}
calls = {}
for path in sys.argv[2:]:
    names.clear()
    pending = None
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
            if m:
                fid, name = m.group(1), m.group(2)
                if name:
                    names[fid] = name.strip()
                pending = names.get(fid) if line.startswith("cfn=") else None
                continue
            if pending and line.startswith("calls="):
                if pending in ENTRY:
                    calls[pending] = calls.get(pending, 0) + int(line.split()[0][6:])
                pending = None
total = sum(calls.values())
detail = ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(calls.items()))
print(f"{total / n:.1f} ({detail})")
