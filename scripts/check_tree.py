#!/usr/bin/env python3
"""Keeps the shape of the source tree true (issue 12), for every crate of the workspace:

1. No import cycle among the top-level modules of a crate: an edge A -> B is any path
   `crate::B` written in a file of module A (`use`, or a path in an expression). A cycle is
   reported with the files that close it.
2. No source file over MAX_FILE_LINES lines.
3. No function over MAX_FN_LINES lines (from its `fn` line to its closing brace; the code is
   rustfmt-formatted, so the closing brace is the first line at the `fn` line's indentation that
   starts with `}`).

Test modules (`tests.rs`, `tests/`, `testutil.rs`) count for sizes but not for the import graph.
A few long files may be listed in ALLOWED_LONG_FILES with the reason they are long.

Prints what it checked and exits 1 on any violation. Usage: scripts/check_tree.py [ROOT]
"""
import os
import re
import sys

MAX_FILE_LINES = 600
MAX_FN_LINES = 100
CRATES = ["safekeeper", "control_file", "remote_storage"]

FN_RE = re.compile(r"^(\s*)(pub(\([a-z: ]+\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")
CRATE_PATH_RE = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")


def rust_files(src):
    for root, _, files in os.walk(src):
        for f in sorted(files):
            if f.endswith(".rs"):
                yield os.path.join(root, f)


def top_module(src, path):
    rel = os.path.relpath(path, src)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def is_test_file(path):
    parts = path.split(os.sep)
    return parts[-1] in ("tests.rs", "testutil.rs") or "tests" in parts[:-1]


def strip_comments(line):
    i = line.find("//")
    return line if i < 0 else line[:i]


def module_edges(src):
    """{module: {dependency: first file that imports it}}, test code excluded."""
    edges = {}
    for path in rust_files(src):
        if is_test_file(path):
            continue
        me = top_module(src, path)
        if me in ("lib", "main"):
            continue
        in_test_mod = False
        with open(path, encoding="utf-8") as f:
            for line in f:
                # An inline `#[cfg(test)] mod tests {` runs to the end of the file by convention.
                if re.match(r"\s*mod tests\s*\{", line):
                    in_test_mod = True
                if in_test_mod:
                    continue
                for m in CRATE_PATH_RE.finditer(strip_comments(line)):
                    dep = m.group(1)
                    if dep != me:
                        edges.setdefault(me, {}).setdefault(dep, path)
    return edges


def find_cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def long_functions(path):
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    found = []
    for i, line in enumerate(lines):
        m = FN_RE.match(line)
        if not m or line.rstrip().endswith(";"):
            continue
        indent = m.group(1)
        for j in range(i + 1, len(lines)):
            if lines[j].startswith(indent + "}"):
                length = j - i + 1
                if length > MAX_FN_LINES:
                    found.append((m.group(7), i + 1, length))
                break
    return found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    problems = []
    files = 0
    for crate in CRATES:
        crate_dir = os.path.join(root, crate)
        src = os.path.join(crate_dir, "src")
        edges = module_edges(src)
        for comp in find_cycles(edges):
            detail = "; ".join(
                f"{a} -> {b} ({os.path.relpath(edges[a][b], root)})"
                for a in comp
                for b in comp
                if b in edges.get(a, {})
            )
            problems.append(f"{crate}: import cycle among {', '.join(comp)}: {detail}")
        for sub in ("src", "tests", "examples", "benches"):
            for path in rust_files(os.path.join(crate_dir, sub)):
                files += 1
                rel = os.path.relpath(path, root)
                with open(path, encoding="utf-8") as f:
                    n = sum(1 for _ in f)
                if n > MAX_FILE_LINES:
                    problems.append(f"{rel}: {n} lines (limit {MAX_FILE_LINES})")
                for name, line, length in long_functions(path):
                    problems.append(
                        f"{rel}:{line}: fn {name} is {length} lines (limit {MAX_FN_LINES})"
                    )
    for p in problems:
        print(p)
    print(
        f"check_tree: {len(CRATES)} crates, {files} files: "
        f"{'OK' if not problems else f'{len(problems)} problem(s)'}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
