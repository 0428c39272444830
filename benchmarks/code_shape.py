"""The shape of chargpt's source: modules per folder, the longest functions, functions over a limit, the fields of
the training state, and references to issue numbers. Prints a table (run from the repository root)."""
from __future__ import annotations

import argparse
import ast
import re
from collections import Counter
from pathlib import Path


def functions(tree: ast.AST, path: Path):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.end_lineno - node.lineno + 1, f"{path}:{node.lineno} {node.name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", default="src/chargpt")
    parser.add_argument("--limit", type=int, default=60, help="list the functions longer than this many lines")
    parser.add_argument("--top", type=int, default=10, help="how many of the longest functions to list")
    args = parser.parse_args()
    root = Path(args.src)
    files = sorted(root.rglob("*.py"))
    per_folder = Counter(str(f.parent.relative_to(root.parent)) for f in files)
    sizes, fields, issue_refs = [], {}, []
    for f in files:
        text = f.read_text()
        tree = ast.parse(text)
        sizes += list(functions(tree, f.relative_to(root.parent)))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(d, "id", getattr(d, "attr", None)) == "dataclass" or
                    getattr(getattr(d, "func", None), "id", None) == "dataclass" for d in node.decorator_list):
                fields[f"{f.relative_to(root.parent)}:{node.name}"] = sum(
                    isinstance(s, ast.AnnAssign) for s in node.body)
        issue_refs += [f"{f.relative_to(root.parent)}:{i}" for i, line in enumerate(text.splitlines(), 1)
                       if re.search(r"issue [0-9]+", line)]
    print(f"| folder | modules |\n|---|---|")
    for folder, n in sorted(per_folder.items()):
        print(f"| {folder} | {n} |")
    print(f"\n{len(files)} modules, {sum(1 for _ in files if True)} files, {len(per_folder)} folders\n")
    print(f"| lines | longest functions |\n|---|---|")
    for n, where in sorted(sizes, reverse=True)[:args.top]:
        print(f"| {n} | {where} |")
    over = [s for s in sizes if s[0] > args.limit]
    print(f"\nfunctions over {args.limit} lines: {len(over)}")
    print(f"\n| fields | dataclass (top 5) |\n|---|---|")
    for name, n in sorted(fields.items(), key=lambda kv: -kv[1])[:5]:
        print(f"| {n} | {name} |")
    print(f"\nlines naming an issue number: {len(issue_refs)}")


if __name__ == "__main__":
    main()
