"""Co-DINO Swin-L on one CUDA device: frames/s and peak GPU memory at batch 1, 2, 4 in fp32 and fp16.

    python bench/codetr_gpu.py [--device cuda:0] [--batches 1 2 4] [--iterations 10]

The full production config (configs/co-dino-5scale-swin-l.py) with random weights, fed
1280x720 frames through the worker's own Detector.predict: the test pipeline's resize to
2048x1152, one forward pass per batch, soft-NMS, boxes back in frame pixels. Random weights
cost about what the official ones do: the work hardly depends on the values (every image
keeps up to 300 boxes through soft-NMS). Prints a table and writes
bench/results/codetr_gpu.json. Exits 2 on a machine without CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autolabel_worker.detector import Detector
from autolabel_worker.models import REPO_CONFIGS_DIR

CONFIG = REPO_CONFIGS_DIR / "co-dino-5scale-swin-l.py"
RESULTS = Path(__file__).resolve().parent / "results"
FRAME = (720, 1280, 3)
HEADER = ("precision", "batch", "frames/s", "ms/frame", "peak GiB")


def _frames(count: int) -> list[np.ndarray]:
    # Distinct frames, so no cache or allocator reuse flatters a repeated input.
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, FRAME, dtype=np.uint8) for _ in range(count)]


def _measure(detector: Detector, batch: int, warmup: int, iterations: int) -> dict[str, float]:
    frames = _frames(batch)
    for _ in range(warmup):
        detector.predict(frames)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(iterations):
        detector.predict(frames)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"frames_per_s": batch * iterations / seconds, "ms_per_frame": 1000 * seconds / (batch * iterations),
            "peak_memory_bytes": torch.cuda.max_memory_allocated()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("codetr_gpu: no CUDA device here; this benchmark needs one (nothing was measured)", file=sys.stderr)
        return 2
    torch.cuda.set_device(args.device)
    rows = []
    for fp16 in (False, True):
        detector = Detector.load(CONFIG, None, device=args.device, fp16=fp16)
        for batch in args.batches:
            precision = "fp16" if fp16 else "fp32"
            try:
                result = _measure(detector, batch, args.warmup, args.iterations)
            except torch.cuda.OutOfMemoryError as exc:
                # A batch that does not fit is a result too: the worker's batch size must stay below it.
                rows.append({"precision": precision, "batch": batch, "error": f"out of memory: {exc}"[:200]})
                torch.cuda.empty_cache()
                continue
            rows.append({"precision": precision, "batch": batch, **result})
        del detector
        torch.cuda.empty_cache()
    report = {
        "config": CONFIG.name,
        "frame": f"{FRAME[1]}x{FRAME[0]}",
        "iterations": args.iterations,
        "rows": rows,
        "machine": {"gpu": torch.cuda.get_device_name(args.device), "torch": torch.__version__,
                    "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "platform": platform.platform()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "codetr_gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    table = [HEADER] + [
        (row["precision"], row["batch"], "-", "-", row["error"]) if "error" in row else
        (row["precision"], row["batch"], f"{row['frames_per_s']:.2f}", f"{row['ms_per_frame']:.0f}",
         f"{row['peak_memory_bytes'] / 2**30:.2f}")
        for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(*table)]
    print(f"Co-DINO Swin-L, {report['frame']} frames, {report['machine']['gpu']}")
    for line in table:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(line, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
