"""The worker's commands come from the worker package (entry-point group ``autolabel.commands``):
the torch-free ``autolabel`` package names no ``autolabel_worker`` module and loads a worker
command only when it is run."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest
from click.testing import CliRunner

from autolabel import cli

ROOT = Path(__file__).resolve().parents[1]
AUTOLABEL = Path(sys.executable).with_name("autolabel")
WORKER_COMMANDS = {"worker", "inspect-checkpoint", "fetch-model"}


def test_the_worker_package_registers_its_commands() -> None:
    registered = {entry.name: entry.value for entry in entry_points(group=cli.COMMANDS_GROUP)}
    assert WORKER_COMMANDS <= set(registered)
    assert all(value.startswith("autolabel_worker.") for value in registered.values())


def test_the_producer_package_imports_no_worker_module() -> None:
    for path in sorted((ROOT / "producer" / "autolabel").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(name.split(".")[0] == "autolabel_worker" for name in names), \
                f"{path.name}:{node.lineno} imports {names}"


def test_worker_commands_run_through_the_autolabel_command() -> None:
    listed = subprocess.run([str(AUTOLABEL), "--help"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and all(f"  {name} " in listed.stdout for name in WORKER_COMMANDS)
    done = subprocess.run([str(AUTOLABEL), "fetch-model", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--sha256" in done.stdout


def test_a_producer_only_install_says_where_the_worker_commands_come_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_plugin_commands", dict)
    result = CliRunner().invoke(cli.main, ["worker"])
    assert result.exit_code == 2
    assert "No such command 'worker'" in result.output and "autolabel-worker package" in result.output
    listed = CliRunner().invoke(cli.main, ["--help"]).output.split("Commands:")[1]
    assert not WORKER_COMMANDS & {line.split()[0] for line in listed.splitlines() if line.strip()}


def test_a_worker_command_that_cannot_import_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = EntryPoint(name="worker", value="autolabel_worker_missing_module:worker", group=cli.COMMANDS_GROUP)
    monkeypatch.setattr(cli, "_plugin_commands", lambda: {"worker": broken})
    result = CliRunner().invoke(cli.main, ["worker"])
    assert result.exit_code == 1
    assert "`worker` needs the autolabel-worker package and its ML stack" in result.output
    assert "Traceback" not in result.output
