"""A web backend can install and use the producer side without torch, mmcv or mmdet."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PRODUCER_MODULES = ["autolabel", "autolabel.cli", "autolabel.settings", "autolabel.storage", "autolabel.doctor"]


def test_producer_installs_and_imports_without_torch(tmp_path: Path, repo_root: Path) -> None:
    env_dir = tmp_path / "backend-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-c", str(repo_root / "requirements" / "lock.txt"), str(repo_root / "producer")],
        check=True, timeout=600,
    )
    check = (
        "import importlib, sys\n"
        f"for name in {PRODUCER_MODULES!r}: importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('torch', 'mmcv', 'mmdet', 'mmengine', 'cv2') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('torch') is None, 'torch is installed in the backend venv'\n"
        "print('producer-ok')\n"
    )
    result = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "producer-ok" in result.stdout
    cli = subprocess.run([str(env_dir / "bin" / "autolabel"), "--help"], capture_output=True, text=True)
    assert cli.returncode == 0 and "doctor" in cli.stdout
