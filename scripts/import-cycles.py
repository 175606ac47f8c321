#!/usr/bin/env python3
"""Import cycles between the files of src/, read from `use crate::…`, `use super::…`, `use self::…`
and inline `crate::…` paths: each path is resolved to the file of the longest module it names.

Prints the files in cycles (strongly connected components of more than one file), each cycle with
its files, and the longest file and function. `--top` groups files by top-level module (forge,
reporter, …) first. Exit status 1 when a cycle exists and `--check` is given.

Usage: scripts/import-cycles.py [--top] [--check] [SRC_DIR]"""

import os
import re
import sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
top_level = "--top" in sys.argv
check = "--check" in sys.argv
src = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
src = os.path.normpath(src)


def module_of(path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel in (["lib"], ["main"]):
        return ()
    if rel[-1] == "mod":
        rel = rel[:-1]
    return tuple(rel)


files = {}
for root, _, names in os.walk(src):
    for n in names:
        if n.endswith(".rs"):
            p = os.path.join(root, n)
            if os.path.relpath(p, src) == "main.rs":
                continue  # the binary, not part of the library's graph
            files[module_of(p)] = p


def resolve(parts):
    """The longest module prefix of `parts` that is a file."""
    parts = tuple(parts)
    while parts and parts not in files:
        parts = parts[:-1]
    return parts if parts in files else None


def expand(tree):
    """`a::{b, c::{d, e}}` → [a::b, a::c::d, a::c::e] (as lists of segments)."""
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, text):
        depth, start, items = 0, 0, []
        for i, ch in enumerate(text):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                items.append(text[start:i])
                start = i + 1
        items.append(text[start:])
        for item in items:
            if not item:
                continue
            if "{" in item:
                head, rest = item.split("{", 1)
                walk(prefix + [s for s in head.split("::") if s], rest[:-1])
            else:
                segs = [s for s in item.split(" as ")[0].split("::") if s]
                out.append(prefix + segs)

    walk([], tree)
    return out


USE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", re.M | re.S)
INLINE = re.compile(r"\bcrate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)")
COMMENT = re.compile(r"//[^\n]*")

edges = {m: set() for m in files}
for mod, path in files.items():
    text = COMMENT.sub("", open(path, encoding="utf-8").read())
    # Tests inside a file may import anything; only the module's own code counts.
    text = text.split("#[cfg(test)]")[0]
    targets = []
    for m in USE.finditer(text):
        for segs in expand(m.group(1)):
            if not segs:
                continue
            if segs[0] == "crate":
                targets.append(segs[1:])
            elif segs[0] in ("super", "self"):
                # `super` of a file's module: the parent (mod.rs/lib.rs count as the module itself).
                base = list(mod)
                while segs and segs[0] in ("super", "self"):
                    if segs[0] == "super":
                        base = base[:-1]
                    segs = segs[1:]
                targets.append(base + segs)
    for m in INLINE.finditer(text):
        targets.append(m.group(1).split("::"))
    for t in targets:
        r = resolve(t)
        if r is not None and r != mod:
            edges[mod].add(r)

if top_level:
    grouped = {}
    for m, outs in edges.items():
        g = m[:1]
        grouped.setdefault(g, set()).update(o[:1] for o in outs if o[:1] != g)
    edges = grouped


def sccs(graph):
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def name(m):
    return "::".join(m) or "crate"


cycles = sccs(edges)
in_cycles = sum(len(c) for c in cycles)
print(f"{'modules' if top_level else 'files'} in import cycles: {in_cycles} (in {len(cycles)} cycles)")
for c in sorted(cycles, key=len, reverse=True):
    print("  " + " ↔ ".join(sorted(name(m) for m in c)))

lengths = sorted(((sum(1 for _ in open(p, encoding="utf-8")), os.path.relpath(p, os.path.dirname(src))) for p in files.values()), reverse=True)
print(f"longest file: {lengths[0][1]} ({lengths[0][0]} lines); over 700 lines: {sum(1 for n, _ in lengths if n > 700)}")
FN = re.compile(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?(?:const\s+)?(?:unsafe\s+)?fn\s+(\w+)")
longest = (0, "")
for path in files.values():
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m or line.rstrip().endswith(";"):
            continue
        indent = m.group(1)
        for j in range(i + 1, len(lines)):
            if lines[j] == indent + "}":
                if j - i + 1 > longest[0]:
                    longest = (j - i + 1, f"{os.path.relpath(path, os.path.dirname(src))}: {m.group(2)}")
                break
print(f"longest function: {longest[1]} ({longest[0]} lines)")
sys.exit(1 if check and cycles else 0)
