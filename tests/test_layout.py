"""The package's architecture, checked from its source: layers, no cycles, SQL only in storage.

``dicomsvc/http`` (the only code importing Starlette or python-multipart) → the pipeline
(``ingest``, ``batch``, ``jobs``, ``retrieve``, ...) → ``imaging`` and ``storage`` →
``dicom`` → ``errors``/``config``. Lower layers never import higher ones.
"""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dicomsvc"
# What each subpackage may import from dicomsvc (besides itself)
ALLOWED = {
    "dicom": {"errors"},
    "imaging": {"errors", "dicom"},
    "storage": {"errors"},
}
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)|BEGIN\s+IMMEDIATE|PRAGMA\s)", re.I | re.S)


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path) -> set[str]:
    """The dicomsvc modules ``name`` imports (relative imports resolved), and third-party tops."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found |= {f"{prefix}.{alias.name}" for alias in node.names}
    known = modules()
    return {m for m in found if m in known or not m.startswith("dicomsvc")}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m in imports(name, path) if m in known and m != name} for name, path in known.items()}


def test_no_import_cycles():
    edges = {name: {m for m in deps if not m.endswith("__init__")} for name, deps in graph().items()}
    edges = {n: {d for d in deps if d != "dicomsvc"} for n, deps in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(trail[trail.index(dep) :] + [dep] if dep in trail else [node, dep])
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles


def test_layers_import_only_downwards():
    wrong = []
    for name, deps in graph().items():
        parts = name.split(".")
        layer = parts[1] if len(parts) > 2 else None
        if layer not in ALLOWED:
            continue
        for dep in deps:
            target = dep.split(".")[1] if dep.count(".") else ""
            if target and target != layer and target not in ALLOWED[layer]:
                wrong.append(f"{name} imports {dep}")
    assert not wrong


def test_only_http_imports_starlette_and_multipart():
    wrong = [
        f"{name} imports {m}"
        for name, path in modules().items()
        if not name.startswith("dicomsvc.http")
        for m in imports(name, path)
        if m.split(".")[0] in ("starlette", "python_multipart", "multipart")
    ]
    assert not wrong


def test_dimse_is_a_layer_beside_http():
    """``dicomsvc/dimse`` (the DICOM SCP) and ``dicomsvc/http`` never import each other; only
    ``dicomsvc/dimse`` imports pynetdicom (and only app.py starts it)."""
    wrong = []
    for name, path in modules().items():
        for m in imports(name, path):
            if name.startswith("dicomsvc.http") and m.startswith("dicomsvc.dimse"):
                wrong.append(f"{name} imports {m}")
            if name.startswith("dicomsvc.dimse") and m.startswith("dicomsvc.http"):
                wrong.append(f"{name} imports {m}")
            if m.split(".")[0] == "pynetdicom" and not name.startswith("dicomsvc.dimse"):
                wrong.append(f"{name} imports {m}")
    assert not wrong
    dimse = {m for m in imports("dicomsvc.dimse", PACKAGE / "dimse" / "__init__.py")}
    assert not any(m.split(".")[0] in ("pynetdicom", "pydicom") for m in dimse)  # imported only when the port is set


def test_sql_lives_only_in_storage():
    wrong = []
    for name, path in modules().items():
        if name.startswith("dicomsvc.storage"):
            continue
        for m in imports(name, path):
            if m.split(".")[0] in ("sqlite3", "aiosqlite"):
                wrong.append(f"{name} imports {m}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                wrong.append(f"{name}:{node.lineno} holds SQL")
    assert not wrong


def test_the_checks_see_what_they_claim(tmp_path, monkeypatch):
    """The checks above are not vacuous: a planted cycle, SQL string and Starlette import are caught."""
    fake = tmp_path / "dicomsvc"
    (fake / "dicom").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "dicom" / "__init__.py").write_text("")
    (fake / "a.py").write_text("from . import b\nQUERY = 'SELECT id FROM dicom'\n")
    (fake / "b.py").write_text("from .a import QUERY\nimport starlette.requests\n")
    (fake / "dicom" / "x.py").write_text("from ..a import QUERY\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    for check in (test_no_import_cycles, test_sql_lives_only_in_storage, test_only_http_imports_starlette_and_multipart,
                  test_layers_import_only_downwards):  # fmt: skip
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} missed a planted violation")
