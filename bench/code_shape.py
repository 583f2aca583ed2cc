"""The shape of `ugpnet/` and `pipelines/` at two commits, side by side: files, lines, the median and
longest function, and how options are declared. Reads the commits from git (no checkout needed), so it
runs the same on a clean clone.

    python bench/code_shape.py                      # BEFORE (the commit #12 was filed against) vs HEAD
    python bench/code_shape.py --before REV --after REV

Options: "declared once" counts dataclass fields whose value is a pipelines.common.options declaration
(`option(...)` or a `common.xxx()` helper that returns one); "flags by hand" counts `add_argument` calls
outside pipelines/common/options.py, each of which today repeats a default or a help text somewhere else.
"""

import argparse
import ast
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "9adda71^"  # the last commit before the first #12 change (dead code removal)
PACKAGES = ("ugpnet", "pipelines")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def python_files(rev: str, package: str) -> dict[str, str]:
    names = [n for n in git("ls-tree", "-r", "--name-only", rev, "--", package).splitlines() if n.endswith(".py")]
    return {name: git("show", f"{rev}:{name}") for name in names}


def function_lengths(tree: ast.AST) -> list[int]:
    return [node.end_lineno - node.lineno + 1 for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]


def is_declaration(value: ast.AST) -> bool:
    """`option(...)`, `options.option(...)` or `common.model()`-style helpers (pipelines.common.shared_options)."""
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
    return name == "option" or owner in ("common", "common_options", "shared_options")


def option_counts(name: str, tree: ast.AST) -> tuple[int, int]:
    declared = sum(1 for node in ast.walk(tree) if isinstance(node, ast.AnnAssign) and node.value is not None
                   and is_declaration(node.value))
    by_hand = 0 if name.endswith("options.py") else sum(
        1 for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_argument" or isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id == "arg")
    return declared, by_hand


def shape(rev: str, package: str) -> dict:
    files = python_files(rev, package)
    lengths, lines, declared, by_hand = [], 0, 0, 0
    for name, text in files.items():
        tree = ast.parse(text)
        lines += len(text.splitlines())
        lengths += function_lengths(tree)
        d, h = option_counts(name, tree)
        declared, by_hand = declared + d, by_hand + h
    longest = max(lengths) if lengths else 0
    return {"files": len(files), "lines": lines, "functions": len(lengths),
            "median function": statistics.median(lengths) if lengths else 0, "longest function": longest,
            "options declared once": declared, "flags by hand": by_hand}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--after", default="HEAD")
    args = parser.parse_args()
    revs = {"before": git("rev-parse", "--short", args.before).strip(),
            "after": git("rev-parse", "--short", args.after).strip()}
    print(f"| package | measure | before ({revs['before']}) | after ({revs['after']}) |")
    print("|---|---|---|---|")
    for package in PACKAGES:
        before, after = shape(args.before, package), shape(args.after, package)
        for key in before:
            print(f"| {package}/ | {key} | {before[key]} | {after[key]} |")


if __name__ == "__main__":
    main()
