"""Writes the JSON Schema of every task payload and result file: ``python -m autolabel.schemas DIR``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from autolabel.contract import DetectTask, FinalizeTask, FrameResult, JobManifest, SubmitFramesTask
from autolabel.exports import CocoFile, LabelStudioTask, Summary
from autolabel.track_exports import LabelStudioVideoTask

SCHEMAS: dict[str, type[BaseModel]] = {
    "detect-task": DetectTask,
    "submit-frames-task": SubmitFramesTask,
    "finalize-task": FinalizeTask,
    "manifest": JobManifest,
    "frame-result": FrameResult,
    "coco": CocoFile,
    "labelstudio-task": LabelStudioTask,
    "labelstudio-video-task": LabelStudioVideoTask,
    "summary": Summary,
}


def render_schemas() -> dict[str, str]:
    return {f"{name}.schema.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
            for name, model in SCHEMAS.items()}


def write_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render_schemas().items():
        path = out_dir / name
        path.write_text(text)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")):
        print(written)
