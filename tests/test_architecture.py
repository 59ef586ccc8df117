"""The layout's rules, read from the source: no import circles, a pure protocol layer, a light
public API (see docs/architecture.md)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "voicerelay"
#: Libraries that do I/O (network, devices, files, screens, processes): never in the pure layer.
IO_LIBRARIES = {"asyncio", "websockets", "socketio", "engineio", "aiohttp", "uvicorn", "redis", "sounddevice",
                "soundfile", "textual", "rich", "typer", "subprocess", "socket", "threading", "multiprocessing",
                "pocketsphinx", "espeakng_loader", "webrtcvad", "soxr"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (top level, functions, TYPE_CHECKING), absolute."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # (a submodule, if it is one)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = {m for m in imports_of(path) if m in modules and m != name}
    # importing a.b.c runs a/__init__ and a/b/__init__ first; those edges are not circles of ours
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles() -> None:
    edges = graph()
    # a package's __init__ importing its own modules for re-export is not a circle of jobs
    for name in edges:
        if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists():
            edges[name] = set()
    assert cycles(edges) == []


def test_protocol_imports_no_io_library_and_nothing_else_of_voicerelay() -> None:
    for path in (PACKAGE / "protocol").rglob("*.py"):
        for imported in imports_of(path):
            top = imported.split(".")[0]
            assert top not in IO_LIBRARIES, f"{path.name} imports {imported}"
            if top == "voicerelay":
                assert imported.startswith("voicerelay.protocol"), f"{path.name} imports {imported}"


def test_the_error_tree_has_one_root() -> None:
    from voicerelay import errors

    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert len(classes) > 20
    assert all(issubclass(c, errors.VoiceRelayError) for c in classes)
    assert {c.exit_code for c in classes} == {1, 2}


def test_the_public_api_loads_lazily() -> None:
    code = ("import sys, json, voicerelay\n"
            "heavy = ['numpy', 'websockets', 'socketio', 'textual', 'sounddevice', 'aiohttp']\n"
            "before = [m for m in heavy if m in sys.modules]\n"
            "from voicerelay import Gateway, GatewayClient, RealtimeConfig, VoiceRelayError\n"
            "print(json.dumps([before, Gateway.__name__, GatewayClient.__name__, RealtimeConfig.__name__,"
            " VoiceRelayError.__name__]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[], "Gateway", "GatewayClient", "RealtimeConfig", "VoiceRelayError"]


def test_the_core_imports_only_the_pure_layer_and_the_error_tree() -> None:
    for name in ("relay.py", "conversation.py"):
        for imported in imports_of(PACKAGE / name):
            top = imported.split(".")[0]
            assert top not in IO_LIBRARIES - {"asyncio"}, f"{name} imports {imported}"
            if top == "voicerelay":
                assert imported.startswith(("voicerelay.protocol", "voicerelay.errors", "voicerelay.relay")), \
                    f"{name} imports {imported}"
