"""Command-line entry points and the no-`inspector`-import house rule."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import inspector_engine.generate as generate_cli
import inspector_engine.train as train_cli

ENGINE = Path(__file__).resolve().parents[2] / "engine"


def test_engine_never_imports_inspector() -> None:
    for path in ENGINE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "inspector" or n.startswith("inspector.") for n in names), f"{path}: {names}"
    code = ("import sys, engine, inspector_engine.train, inspector_engine.generate, inspector_engine.model, inspector_engine.inference; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('inspector', 'pandas', 'dash')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ENGINE.parent, timeout=120)


def test_train_then_generate_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert train_cli.main(["--config", "debug", "--steps", "3", "--batch-size", "2", "--seq-len", "16",
                           "--eval-every", "3", "--eval-batches", "1", "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["train", "train", "train", "eval"]
    ckpt = out / "ckpt_0000003.pt"
    assert ckpt.exists()
    assert train_cli.main(["--config", "debug", "--steps", "4", "--batch-size", "2", "--seq-len", "16",
                           "--eval-every", "0", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert (out / "ckpt_0000004.pt").exists()
    capsys.readouterr()
    assert generate_cli.main(["--ckpt", str(ckpt), "--prompt", "ROMEO:", "--prompt", "JULIET:",
                              "--max-new-tokens", "5", "--temperature", "0", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "=== 'ROMEO:'" in text and "=== 'JULIET:'" in text


def test_generate_inspect_points_to_the_inspector_command(tmp_path: Path, capsys) -> None:
    """`--inspect` on the engine's own CLI is one line naming `inspector generate`, exit 2, nothing written."""
    run = tmp_path / "run"
    assert generate_cli.main(["--config", "debug", "--inspect", str(run), "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"inspector generate --inspect {run}" in err[0]
    assert not run.exists()
