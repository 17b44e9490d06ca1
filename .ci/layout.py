#!/usr/bin/env python3
"""The house rules CONTRIBUTING.md states, checked: within each crate no modules
import each other in a circle (through `crate::` paths), and no source file is over
1,000 lines. Prints what breaks them and exits 1."""
import glob
import re
import sys

MAX_LINES = 1000
failed = False
for base in sorted(glob.glob("crates/*/src")):
    files = glob.glob(base + "/**/*.rs", recursive=True)
    top = lambda f: f[len(base) + 1 : -3].replace("/mod", "").split("/")[0]
    names = {top(f) for f in files}
    imports = {}
    for f in files:
        text = open(f, encoding="utf-8").read()
        lines = text.count("\n")
        if lines > MAX_LINES:
            print(f"{f}: {lines} lines (at most {MAX_LINES})")
            failed = True
        code = text.split("#[cfg(test)]")[0]
        refs = set(re.findall(r"crate::([a-z_]+)", code))
        imports.setdefault(top(f), set()).update(r for r in refs if r in names and r != top(f))
    cycles = set()

    def walk(node, path):
        for nxt in imports.get(node, ()):
            if nxt in path:
                c = path[path.index(nxt):]
                k = c.index(min(c))
                cycles.add(tuple(c[k:] + c[:k]))
            elif len(path) < 10:
                walk(nxt, path + [nxt])

    for n in imports:
        walk(n, [n])
    for c in sorted(cycles):
        print(f"{base}: modules import each other in a circle: {' -> '.join(c + (c[0],))}")
        failed = True
sys.exit(1 if failed else 0)
