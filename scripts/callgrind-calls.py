#!/usr/bin/env python3
# callgrind-calls.py CALLGRIND_OUT NAME: calls to functions whose name contains NAME, their
# inclusive instructions and instructions per call (docs/benchmarks.md, "S8 index and the status walk").
import sys, re
path, needle = sys.argv[1], sys.argv[2]
names = {}
calls = 0; incl = 0
lines = open(path, errors='replace').read().splitlines()
i = 0
cur_cfn = None
while i < len(lines):
    l = lines[i]
    m = re.match(r'^cfn=\((\d+)\)(?: (.*))?$', l)
    if m:
        fid, nm = m.group(1), m.group(2)
        if nm: names[fid] = nm
        cur_cfn = names.get(fid, '')
    m = re.match(r'^c?fn=\((\d+)\) (.*)$', l)
    if m: names[m.group(1)] = m.group(2)
    if l.startswith('calls=') and cur_cfn and needle in cur_cfn:
        calls += int(l.split('=')[1].split()[0])
        cost = lines[i+1].split()
        incl += int(cost[1]) if len(cost) > 1 else 0
    i += 1
print(f"{needle}: calls={calls} inclusive={incl:,} per_call={incl//max(calls,1):,}")
