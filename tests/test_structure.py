"""Code structure (issue: one owner per concern): no import cycles, a lazy CLI, an importable training module,
the public API, and one writer of the model bundle."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "skinlesion"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every skinlesion module ``path`` imports, at the top or inside a function."""
    me = _module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("skinlesion"):
                names = [f"{target}.{a.name}" for a in node.names]
                out |= {
                    n
                    for n in names
                    if (PKG.parent / n.replace(".", "/")).with_suffix(".py").exists()
                    or (PKG.parent / n.replace(".", "/") / "__init__.py").exists()
                } or {target}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("skinlesion")}
    return out - {".".join(me)}


def test_no_import_cycle_among_the_package_modules():
    graph = {_module_name(p): _imports(p) for p in PKG.rglob("*.py") if p.name != "app.py"}
    # a package's __init__ re-exporting its modules is not a cycle of concerns
    graph = {
        m: {t for t in deps if not (t in graph and graph.get(t) and m.startswith(t + ".") and t.count(".") < m.count("."))}
        for m, deps in graph.items()
    }
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m) :] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t in graph:
                visit(t)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, cycles


def test_cli_import_is_lazy_and_training_module_is_importable():
    code = (
        "import sys, skinlesion.cli, skinlesion; "
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'eager import'; "
        "from skinlesion.train import LesionModule, ExportModels; "
        "import lightning; assert issubclass(LesionModule, lightning.LightningModule)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_public_api_is_lazy_and_complete():
    code = (
        "import sys, skinlesion; assert 'torch' not in sys.modules; "
        "from skinlesion import Predictor, load_model, train, evaluate, load_dataset, make_split, train_cv; "
        "assert callable(Predictor) and callable(load_model) and callable(train_cv); "
        "assert set(skinlesion.__all__) >= {'Predictor', 'load_model', 'train', 'evaluate', 'load_dataset', 'make_split'}"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_only_the_bundle_module_writes_a_model_config():
    """No other module or tool writes a model's JSON (``*.json`` beside a ``.safetensors``)."""
    offenders = []
    for p in [*PKG.rglob("*.py"), *(PKG.parents[1] / "tools").glob("*.py"), *(PKG.parents[1] / "benchmarks").glob("*.py")]:
        if p.name == "bundle.py":
            continue
        text = p.read_text()
        if 'with_suffix(".json").write_text' in text or "default.json" in text and "write_text" in text:
            offenders.append(p.name)
    assert not offenders, offenders


def test_a_bad_train_option_is_refused_before_torch_is_imported(tmp_path):
    """Issue 18: bad options used to be refused after 12 s and 1 GB of imports."""
    code = (
        "import sys; from skinlesion.cli import main\n"
        "try:\n"
        f"    main(['train', {str(tmp_path)!r}, '--split', 's.csv', '--out', {str(tmp_path / 'o')!r}, '--epochs', '0'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 2, e.code\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'torch was imported before the refusal'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--epochs 0 must be at least 1." in r.stderr
    assert not (tmp_path / "o").exists()  # nothing written either


def test_the_cli_is_split_by_verb_group_and_runs_as_a_module():
    """Issue 27: no CLI module over 400 lines; ``python -m skinlesion`` and ``python -m skinlesion.cli`` list every verb."""
    long = {p.name: n for p in (PKG / "cli").glob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
    assert not (PKG / "cli.py").exists()  # one place for the command
    verbs = ("info", "split", "audit", "download", "train", "evaluate", "predict", "export", "card", "app", "serve", "prepare", "study")
    for module in ("skinlesion", "skinlesion.cli"):
        r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
        assert r.returncode == 0, r.stderr
        listed = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("│ ") and len(line.split()) > 2]
        assert [v for v in listed if v in verbs] == list(verbs), (module, listed)


def test_every_default_an_option_help_states_is_shown_by_help():
    """Rich markup reads "[default: 30]" as a tag and drops it: an option whose help states its default in
    brackets must show it (escaped in the source), and no escape character may reach the user."""
    import typer.main

    from skinlesion.cli import app
    from typer.testing import CliRunner

    root = typer.main.get_command(app)
    commands, stated = [((), root)], 0
    while commands:
        path, cmd = commands.pop()
        if getattr(cmd, "commands", None):  # a group (typer's own click, not necessarily the click package)
            commands += [((*path, name), sub) for name, sub in cmd.commands.items()]
            continue
        wanted = [p.help.split("[default:", 1)[1].split("]", 1)[0] for p in cmd.params if "[default:" in (getattr(p, "help", None) or "")]
        if not wanted:
            continue
        out = CliRunner().invoke(app, [*path, "--help"], terminal_width=400, env={"COLUMNS": "400"}).output
        flat = " ".join(out.replace("│", " ").split())
        for text in wanted:
            stated += 1
            assert "[default: " + " ".join(text.split()) + "]" in flat, (path, text)
        assert "\\[" not in out, path
    assert stated >= 20  # train, serve and app state theirs this way
