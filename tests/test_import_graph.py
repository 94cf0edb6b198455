"""The import graph (every import, also those inside functions): the export package reaches no
module that imports it back (no circle export → training → export), the export package never
imports training, and the simulators are reached in one place — only the simulators themselves,
the evaluation package and the rig seam (dmicro_hw/rig.py) import them or test a backend name
for ``"sim"``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: source folder → package name (pyproject's package-dir)
FOLDERS = {
    "dmicro_hw": "dmicro_hw",
    "drivers": "dmicro_hw.drivers",
    "simulators": "dmicro_hw.simulators",
    "calibration": "dmicro_hw.calibration",
}


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for folder, pkg in FOLDERS.items():
        for p in (ROOT / folder).rglob("*.py"):
            rel = p.relative_to(ROOT / folder).with_suffix("")
            parts = [] if rel.parts == ("__init__",) else list(rel.parts)
            if parts and parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([pkg, *parts])
            if not (folder == "dmicro_hw" and parts[:1] in (["drivers"], ["simulators"])):
                out[name] = p
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}

    def add(src: str, target: str) -> None:
        parts = target.split(".")
        for i in range(2, len(parts) + 1):  # importing a.b.c runs a.b's __init__ first
            name = ".".join(parts[:i])
            if name in mods and name != src:
                graph[src].add(name)

    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for a in node.names:
                    add(name, a.name)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                add(name, base)
                for a in node.names:
                    add(name, f"{base}.{a.name}")
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_export_package_has_no_import_circle_and_no_training() -> None:
    g = import_graph()
    export_mods = [m for m in g if m == "dmicro_hw.export" or m.startswith("dmicro_hw.export.")]
    assert {"dmicro_hw.export", "dmicro_hw.export.exporter", "dmicro_hw.export.files"} <= set(
        export_mods
    )
    for m in export_mods:
        reach = reachable(g, m)
        assert not any(r.startswith("dmicro_hw.training") for r in reach), m
        back = sorted(r for r in reach if r not in export_mods and m in reachable(g, r))
        assert back == [], f"{m} is in an import circle with {back}"
    # the circle this replaced is still seen by the check: training reaches export
    assert "dmicro_hw.export" in reachable(g, "dmicro_hw.training.model")


SIMULATORS = "dmicro_hw.simulators"
#: modules that may import the simulators: the twins, the evaluation package, the rig seam
MAY_IMPORT_SIMULATORS = (SIMULATORS, "dmicro_hw.evaluation", "dmicro_hw.rig")
#: not yet moved: none (the calibration's scorer against the hidden truth lives in
#: dmicro_hw.evaluation.calibration_bench). Never grow this set.
NOT_YET_MOVED: set[str] = set()
#: a test of a backend name against the simulators, e.g. ``camera.backend == "sim"``
SIM_BACKEND_TEST = re.compile(r"backend\b[^\n]*[!=]=\s*[\"']sim[\"']|[\"']sim[\"']\s*[!=]=")


def _allowed(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in MAY_IMPORT_SIMULATORS)


def _allowed_sim(dep: str) -> bool:
    return dep == SIMULATORS or dep.startswith(SIMULATORS + ".")


def test_simulators_are_imported_only_by_evaluation_and_the_rig_seam() -> None:
    g = import_graph()
    assert SIMULATORS in g and "dmicro_hw.evaluation.sim_throughput" in g
    importers = {
        m for m, deps in g.items() if not _allowed(m) and any(_allowed_sim(d) for d in deps)
    }
    assert importers == NOT_YET_MOVED, sorted(importers ^ NOT_YET_MOVED)
    # the acquisition and calibration layers reach the twins only through the seam's Protocols
    for m in ("dmicro_hw.acquisition.session", "dmicro_hw.calibration.capture"):
        assert not any(r.startswith(SIMULATORS) for r in g[m])


def test_no_backend_is_tested_for_sim_outside_evaluation_and_the_seam() -> None:
    found = set()
    for name, path in modules().items():
        if not _allowed(name) and SIM_BACKEND_TEST.search(path.read_text()):
            found.add(name)
    assert found <= NOT_YET_MOVED, sorted(found - NOT_YET_MOVED)
    assert SIM_BACKEND_TEST.search('if rig.camera.backend == "sim":')
    assert SIM_BACKEND_TEST.search("if 'sim' != section.backend:")
    assert not SIM_BACKEND_TEST.search('backend: str = Field("sim")')
