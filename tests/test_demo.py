"""`make demo`'s program, run as `make demo TRACK=1` runs it: it ends on its own, every path it
prints is still there after it has stopped everything, and the tracked job's exports are there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_demo_ends_on_its_own_and_the_logs_it_prints_are_kept(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTOLABEL_")}
    result = subprocess.run([sys.executable, "-m", "autolabel_worker.demo", "--track"], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("mAP@0.5: ")
    logs = re.search(r"worker log (\S+), Flower log (\S+) ", result.stdout)
    assert logs, result.stdout
    for path in map(Path, logs.groups()):
        assert path.is_file() and path.stat().st_size > 0, path
        assert path.is_relative_to(tmp_path / "demo-output")
    assert "autolabel.pool" in Path(logs.group(1)).read_text()  # the worker's own log, not a stand-in
    flower = next(line for line in lines if "Flower at http://127.0.0.1:" in line)
    assert "stops with" in flower
    tracks = re.search(r"demo: (\d+) tracks .*; (\S+)/cvat-video.xml, .*; (\S+\.mp4)", result.stdout)
    assert tracks and int(tracks.group(1)) > 0, result.stdout
    job_dir = Path(tracks.group(2))
    for name in ("cvat-video.xml", "labelstudio-video.json", "mot.txt"):
        assert (job_dir / name).stat().st_size > 0, name
    assert Path(tracks.group(3)).stat().st_size > 0
