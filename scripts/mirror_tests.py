#!/usr/bin/env python3
"""Move tests into folders that mirror the package layout, and fix what the move breaks.

    python scripts/mirror_tests.py            # move (git mv) and rewrite; prints what moved
    python scripts/mirror_tests.py --check    # exit 1 listing tests not where the rule says

Safe to re-run: a test already in its folder stays; a new ``tests/test_*.py`` (added flat by
another branch) lands in its folder. Where ``tests/test_NAME.py`` goes, first match wins:

1. ``EXACT[NAME]`` — a test whose name does not say its package.
2. the longest leading part of NAME (split at ``_``) that is
   a. a top-level module ``dmicro_hw/PART.py``   → stays in ``tests/`` (the mirror of that module);
   b. a package: ``dmicro_hw/PART/`` or a folder mapped by pyproject's package-dir
      (``drivers``, ``simulators``, ``calibration``) → ``tests/PART/``;
   c. ``ALIASES[PART]``                          → that folder;
3. the longest leading part that is a module ``PART.py`` of exactly one package → its folder;
4. otherwise: an error naming the file (add an EXACT or ALIASES entry).

Then: every test folder gets an ``__init__.py`` (test modules are ``tests.PKG.test_x``: unique
names even where basenames repeat, and tests may import each other); ``Path(__file__)…parents[N]``
and ``.parent.parent`` in a moved file are deepened by the levels it moved; imports between tests
(``from test_x import``, ``from conftest import``) become ``from tests.PKG.test_x import`` /
``from tests.conftest import``; ``tests/test_x.py`` paths (and globs such as
``tests/test_optics_*.py``) in tracked text files are rewritten; ruff sorts the imports of the
tests and formats them.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
TOP = ""  # the tests/ folder itself

#: names that do not start with their package (NAME = file stem without "test_")
EXACT = {
    "import_graph": TOP,  # the import graph of the whole package
    "adu_map": "optics",  # optics/sensor.py ADUMap
    "beads": "evaluation",  # bead model, generator and fit (evaluation/beads.py)
}
#: leading name parts that are not a package
ALIASES = {
    "bench": "evaluation",  # benchmarks live in the evaluation package
    "eval": "evaluation",
    "evaluate": "evaluation",
    "decoder": "models",
    "decoders": "models",
    "model": "models",
    "device": "drivers",
    "devices": "drivers",
    "reconstruct": "acquisition",
    "store": "acquisition",
    "train": "training",
    "optic": "optics",
    "sim": "simulators",
    "simulator": "simulators",
    # whole-system tests that cross packages, through the real CLI
    "e2e": "e2e",
    "quick": "e2e",
    "soak": "e2e",
    "hostile": "e2e",
    "fuzz": "e2e",
}
#: docstrings of the test packages
DOC = {
    TOP: "Tests of dmicro-hw, laid out like the package: tests/PKG/ holds the tests of "
    "dmicro_hw.PKG; the tests of a top-level module (dmicro_hw/config.py, cli.py, rig.py, …) "
    "and of the whole import graph stay here, beside conftest.py (the shared fixtures).",
    "e2e": "Whole-system tests that cross packages: the README's quick path, the soak slice, "
    "hostile input and fuzzed readers, through the real CLI.",
}
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".txt", ""}


def package_folders() -> dict[str, Path]:
    """Test folder name → source folder, for every package of pyproject's layout."""
    out = {
        p.name: p
        for p in sorted((ROOT / "dmicro_hw").iterdir())
        if p.is_dir() and (p / "__init__.py").is_file()
    }
    text = (ROOT / "pyproject.toml").read_text()
    for pkg, folder in re.findall(r'"dmicro_hw\.(\w+)"\s*=\s*"([\w/]+)"', text):
        out[pkg] = ROOT / folder
    return out


def top_modules() -> set[str]:
    return {p.stem for p in (ROOT / "dmicro_hw").glob("*.py") if p.stem != "__init__"}


def unique_modules(pkgs: dict[str, Path]) -> dict[str, str]:
    seen: dict[str, list[str]] = {}
    for name, folder in pkgs.items():
        for p in folder.glob("*.py"):
            seen.setdefault(p.stem.lstrip("_"), []).append(name)
    return {m: ps[0] for m, ps in seen.items() if len(ps) == 1}


def folder_for(name: str, pkgs: dict[str, Path], tops: set[str], uniq: dict[str, str]) -> str:
    """Test folder ("" = tests/) of test_NAME.py; KeyError when no rule matches."""
    if name in EXACT:
        return EXACT[name]
    parts = name.split("_")
    leading = ["_".join(parts[:k]) for k in range(len(parts), 0, -1)]  # longest first
    for part in leading:
        if part in tops:
            return TOP
        if part in pkgs:
            return part
        if part in ALIASES:
            return ALIASES[part]
    for part in leading:  # only then a module name (test_bench_paper: bench → evaluation)
        if part in uniq:
            return uniq[part]
    raise KeyError(name)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def tracked(path: Path) -> bool:
    r = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(path.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
    )
    return r.returncode == 0


def deepen(text: str, levels: int) -> tuple[str, list[str]]:
    """Paths relative to ``__file__`` of a file moved ``levels`` folders deeper."""
    text = re.sub(
        r"(Path\(__file__\)(?:\.resolve\(\))?\.parents\[)(\d+)\]",
        lambda m: f"{m.group(1)}{int(m.group(2)) + levels}]",
        text,
    )
    text = re.sub(
        r"(Path\(__file__\)(?:\.resolve\(\))?)((?:\.parent)+)(?!s)",
        lambda m: m.group(1) + m.group(2) + ".parent" * levels,
        text,
    )
    odd = [
        line.strip()
        for line in text.splitlines()
        if "__file__" in line and not re.search(r"Path\(__file__\)(\.resolve\(\))?\.parent", line)
    ]
    return text, odd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report misplaced tests")
    args = ap.parse_args()
    pkgs, tops = package_folders(), top_modules()
    uniq = unique_modules(pkgs)

    # where every test file is now and where the rule puts it
    plan: dict[Path, Path] = {}
    unmapped = []
    for p in sorted(TESTS.rglob("test_*.py")):
        try:
            folder = folder_for(p.stem.removeprefix("test_"), pkgs, tops, uniq)
        except KeyError:
            unmapped.append(p)
            continue
        plan[p] = TESTS / folder / p.name if folder else TESTS / p.name
    if unmapped:
        for p in unmapped:
            print(f"error: no rule places {p.relative_to(ROOT)}: add it to EXACT or ALIASES")
        return 2
    targets = [t for t in plan.values()]
    dupes = {t for t in targets if targets.count(t) > 1}
    if dupes:
        print(f"error: two tests would land on {sorted(map(str, dupes))}")
        return 2
    moves = {s: t for s, t in plan.items() if s != t}
    if args.check:
        for s, t in moves.items():
            print(f"misplaced: {s.relative_to(ROOT)} → {t.relative_to(ROOT)}")
        return 1 if moves else 0

    # 1. move (git mv keeps history) and deepen __file__-relative paths
    for s, t in moves.items():
        t.parent.mkdir(parents=True, exist_ok=True)
        if tracked(s):
            git("mv", str(s.relative_to(ROOT)), str(t.relative_to(ROOT)))
        else:
            s.rename(t)
        levels = len(t.relative_to(TESTS).parts) - len(s.relative_to(TESTS).parts)
        text, odd = deepen(t.read_text(), levels)
        t.write_text(text)
        for line in odd:
            print(f"warning: {t.relative_to(ROOT)}: check this use of __file__: {line}")
        print(f"{s.relative_to(ROOT)} → {t.relative_to(ROOT)}")

    # 2. packages: tests/__init__.py and one per folder
    folders = {TESTS} | {t.parent for t in plan.values()}
    for d in sorted(folders):
        init = d / "__init__.py"
        if not init.exists():
            rel = "" if d == TESTS else d.relative_to(TESTS).as_posix()
            doc = DOC.get(rel) or f"Tests of dmicro_hw.{rel.replace('/', '.')}."
            lines = textwrap.wrap(f'"""{doc}"""', width=100)
            init.write_text("\n".join(lines) + "\n")
            git("add", str(init.relative_to(ROOT)))

    # 3. imports between tests: from test_x / from conftest → from tests.PKG.test_x
    where = {t.stem: t for t in plan.values()}

    def module_of(stem: str) -> str | None:
        if stem == "conftest":
            return "tests.conftest"
        t = where.get(stem)
        return ".".join(t.relative_to(ROOT).with_suffix("").parts) if t else None

    imp = re.compile(r"^(\s*)from\s+(?:tests\.(?:\w+\.)*)?(test_\w+|conftest)\s+import\b", re.M)
    for p in sorted(TESTS.rglob("*.py")):
        text = p.read_text()

        def fix(m: re.Match) -> str:
            mod = module_of(m.group(2))
            return f"{m.group(1)}from {mod} import" if mod else m.group(0)

        new = imp.sub(fix, text)
        if re.search(r"^\s*import\s+(test_\w+|conftest)\b", new, re.M):
            print(f"warning: {p.relative_to(ROOT)}: `import test_…` left as is; use `from …`")
        if new != text:
            p.write_text(new)

    # 4. paths of tests named in tracked text files (README, docstrings, scripts, comments)
    ref = re.compile(r"\btests/(?:[a-z0-9_]+/)*(test_[A-Za-z0-9_*]+\.py)")
    here = {t.name: t for t in plan.values()}

    def path_of(m: re.Match) -> str:
        name = m.group(1)
        if "*" in name:  # a glob: place its literal part by the rule
            stem = name.split("*")[0].removeprefix("test_").rstrip("_")
            try:
                folder = folder_for(stem, pkgs, tops, uniq)
            except KeyError:
                return m.group(0)
            return f"tests/{folder}/{name}" if folder else f"tests/{name}"
        t = here.get(name)
        if t is None:
            print(f"warning: {m.group(0)} names no test file (left as is)")
            return m.group(0)
        return t.relative_to(ROOT).as_posix()

    changed = []
    for rel in git("ls-files").splitlines():
        p = ROOT / rel
        if p.suffix not in TEXT_SUFFIXES or not p.is_file() or p.is_symlink():
            continue
        if p.resolve() == Path(__file__).resolve():  # its own examples stay as they are
            continue
        try:
            text = p.read_text()
        except UnicodeDecodeError:
            continue
        new = ref.sub(path_of, text)
        if new != text:
            p.write_text(new)
            changed.append(rel)
            print(f"paths updated in {rel}")

    # 5. imports sorted (tests.* is first-party now) and formatted
    for cmd in (["ruff", "check", "--fix", "--select", "I", "tests"], ["ruff", "format", "tests"]):
        subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, check=False)
    # longer paths can push a docstring or comment past the line limit: name what to wrap
    py = [c for c in changed if c.endswith(".py")] + ["tests"]
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "E501", *py], cwd=ROOT)
    return 1 if r.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
