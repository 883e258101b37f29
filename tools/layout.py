#!/usr/bin/env python3
"""`make layout`: each folder of src/ with its files and line counts, the dependency order of the
units (a folder, or a file at the top of src/), and two checks that fail the run:
- no import cycle between units (a `crate::<unit>` reference in code outside `#[cfg(test)]`);
- no file over MAX_LINES lines before its tests.
Test code is left out of both: tests may reach anywhere."""

import re
import sys
from pathlib import Path

MAX_LINES = 500
SRC = Path(__file__).resolve().parent.parent / "src"
# Not units of their own: the crate root, and test-only helpers.
SKIP = {"lib", "testkit"}


def code_lines(text):
    """The lines before the file's inline test module (`#[cfg(test)]` then `mod … {`), which comes
    last by convention."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        following = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.strip() == "#[cfg(test)]" and following.startswith("mod ") and following.endswith("{"):
            return lines[:i]
    return lines


def unit_of(path):
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def main():
    files = sorted(SRC.rglob("*.rs"))
    deps, sizes, too_big = {}, {}, []
    for f in files:
        text = f.read_text()
        code = code_lines(text)
        unit = unit_of(f)
        sizes.setdefault(unit, []).append((f.relative_to(SRC), len(code), len(text.splitlines())))
        if len(code) > MAX_LINES:
            too_big.append((f.relative_to(SRC), len(code)))
        if unit in SKIP:
            continue
        body = "\n".join(l for l in code if not l.lstrip().startswith("//"))
        for used in re.findall(r"\bcrate::(\w+)", body):
            if used != unit and used not in SKIP:
                deps.setdefault(unit, set()).add(used)
        deps.setdefault(unit, set())

    print(f"{'file':<34} {'lines':>6} {'with tests':>11}")
    for unit in sorted(sizes):
        total = sum(n for _, n, _ in sizes[unit])
        print(f"{unit + '/' if len(sizes[unit]) > 1 or (SRC / unit).is_dir() else unit:<34} {total:>6}")
        if (SRC / unit).is_dir():
            for rel, n, all_lines in sizes[unit]:
                print(f"  {str(rel):<32} {n:>6} {all_lines:>11}")

    # Kahn's algorithm: what remains once no unit without unplaced dependencies is left is a cycle.
    order, placed, remaining = [], set(), set(deps)
    while True:
        ready = sorted(u for u in remaining if deps[u] <= placed | {u})
        if not ready:
            break
        for u in ready:
            order.append(u)
            placed.add(u)
            remaining.discard(u)
    print("\ndependency order (each unit uses only units before it):")
    for u in order:
        used = ", ".join(sorted(deps[u])) or "-"
        print(f"  {u:<10} uses {used}")
    ok = True
    if remaining:
        ok = False
        print("\nIMPORT CYCLE among: " + ", ".join(sorted(remaining)))
        for u in sorted(remaining):
            print(f"  {u} uses {', '.join(sorted(deps[u] & remaining))}")
    if too_big:
        ok = False
        for rel, n in too_big:
            print(f"\nTOO LARGE: src/{rel} has {n} lines before its tests (limit {MAX_LINES})")
    print("\nlayout: ok" if ok else "\nlayout: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
