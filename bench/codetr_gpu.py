"""Co-DINO Swin-L on one CUDA device: bench/run.py's tables with the real model, against the seed.

    python bench/codetr_gpu.py [--device cuda:0] [--batches 1 2 4] [--procs 1 2] [--frames 100]

The full production config (configs/co-dino-5scale-swin-l.py) with random weights (saved to a
checkpoint file for the worker processes), fed 1280x720 frames: the test pipeline's resize to
2048x1152, one forward pass per batch, soft-NMS, boxes back in frame pixels. Random weights cost
about what the official ones do: the work hardly depends on the values (every image keeps up to
300 boxes through soft-NMS). Measured, in fp32 and fp16 at batch 1, 2, 4:

    bare       the worker's Detector.predict in a loop in this process: frames/s, ms a frame, peak
               GPU memory; against the seed's 5 frames/s and 9.6 GB
    pipeline   real `autolabel worker` processes (1 and 2 a card) on a backlog job through Redis and
               the S3 server: frames/s, efficiency (pipeline over bare frames/s, one process), the
               share of the job the model ran, peak memory per process (its warm-up batch)
    latency    single-frame tasks into an idle worker (fp32 and fp16): submit-to-result / the bare
               single-frame time
    stages     the CPU ms a frame costs outside the card, by stage (fp16, batch 4)

Prints the tables and writes bench/results/codetr_gpu.json. Exits 2, measuring nothing, on a
machine without CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import run
from autolabel.devservices import DevStack
from autolabel_worker.detector import Detector
from autolabel_worker.models import REPO_CONFIGS_DIR

MODEL = "co-dino-5scale-swin-l"
CONFIG = REPO_CONFIGS_DIR / f"{MODEL}.py"
FRAME = (720, 1280, 3)
# The seed's figures for this model on one card, 1280x720 frames: what the tables are read against.
SEED_FRAMES_PER_S = 5.0
SEED_MEMORY_BYTES = 9.6e9


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
    singles = []
    for frame in frames[:1] * 5:
        t = time.perf_counter()
        detector.predict([frame])
        singles.append(time.perf_counter() - t)
    return {"frames_per_s": batch * iterations / seconds, "ms_per_frame": 1000 * seconds / (batch * iterations),
            "single_frame_s": statistics.median(singles), "peak_memory_bytes": torch.cuda.max_memory_allocated()}


def bare(args: argparse.Namespace) -> list[dict[str, Any]]:
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
    run.table("bare (Detector.predict in a loop)", ("precision", "batch", "frames/s", "x seed 5 frames/s",
              "ms/frame", "peak GB", "/ seed 9.6 GB"),
              [(r["precision"], r["batch"], "-", "-", "-", r["error"], "-") if "error" in r else
               (r["precision"], r["batch"], f"{r['frames_per_s']:.2f}", f"{r['frames_per_s'] / SEED_FRAMES_PER_S:.2f}",
                f"{r['ms_per_frame']:.0f}", f"{r['peak_memory_bytes'] / 1e9:.2f}",
                f"{r['peak_memory_bytes'] / SEED_MEMORY_BYTES:.2f}") for r in rows])
    return rows


def random_checkpoint(directory: Path) -> Path:
    """The config's initial weights as a checkpoint file: worker processes load a checkpoint."""
    detector = Detector.load(CONFIG, None, device="cpu")
    path = directory / f"{MODEL}-random.pth"
    torch.save({"state_dict": detector.model.state_dict()}, path)
    return path


def pipeline(args: argparse.Namespace, bare_rows: list[dict[str, Any]]) -> dict[str, Any]:
    bare_by = {(r["precision"], r["batch"]): r for r in bare_rows if "error" not in r}
    rows, latency_rows, out = [], [], {"pipeline": [], "latency": []}
    with tempfile.TemporaryDirectory(prefix="codetr-") as tmp, DevStack() as stack:
        checkpoint = random_checkpoint(Path(tmp))
        bench = run.Bench(stack, max(args.frames, args.samples), "cuda")
        for precision in ("fp32", "fp16"):
            spec = run.ModelSpec(MODEL, env={"AUTOLABEL_CHECKPOINT": str(checkpoint),
                                             "AUTOLABEL_FP16": str(precision == "fp16").lower()})
            client = bench.client_for(spec)
            for batch in args.batches:
                if (precision, batch) not in bare_by:
                    continue  # out of memory in one process already
                for procs in args.procs:
                    with bench.workers(spec, batch, procs) as pool:
                        cpu_before = pool.cpu_s()
                        job_id, submitted, labeled = bench.job(client, bench.refs[:args.frames], batch)
                        worker_cpu_ms = 1000 * (pool.cpu_s() - cpu_before) / args.frames
                        if procs == 1 and batch == max(args.batches):
                            times = bench.single_latencies(client, batch, args.samples)
                            latency = statistics.median(labeled_at - started for started, _, labeled_at in times)
                            single = bare_by[(precision, 1)]["single_frame_s"] if (precision, 1) in bare_by else \
                                bare_by[(precision, batch)]["single_frame_s"]
                            out["latency"].append({"precision": precision, "submit_to_result_s": latency,
                                                   "bare_single_frame_s": single,
                                                   "idle_latency_ratio": latency / single})
                            latency_rows.append((precision, f"{latency:.3f}", f"{single:.3f}",
                                                 f"{latency / single:.3f}"))
                    wall = labeled - submitted
                    fps = args.frames / wall
                    device_s = bench.client.progress.timings(job_id)["device_seconds"]
                    peak = max(int(w["peak_memory_bytes"]) for w in pool.warmups)
                    efficiency = fps / bare_by[(precision, batch)]["frames_per_s"] if procs == 1 else None
                    out["pipeline"].append({"precision": precision, "batch": batch, "processes": procs,
                                            "frames": args.frames, "frames_per_s": fps, "efficiency": efficiency,
                                            "model_busy": device_s / wall / procs,
                                            "peak_memory_bytes_per_process": peak,
                                            "worker_cpu_ms_per_frame": worker_cpu_ms})
                    rows.append((precision, batch, procs, f"{fps:.2f}", f"{fps / SEED_FRAMES_PER_S:.2f}",
                                 "-" if efficiency is None else f"{efficiency:.3f}", f"{device_s / wall / procs:.2f}",
                                 f"{peak / 1e9:.2f}", f"{worker_cpu_ms:.1f}"))
        run.table(f"pipeline (autolabel worker, {args.frames} frames a job)",
                  ("precision", "batch", "processes", "frames/s", "x seed", "efficiency", "model busy",
                   "peak GB/process", "worker CPU ms/frame"), rows)
        run.table("latency (a lone frame into an idle worker)",
                  ("precision", "submit-to-result s", "bare single s", "idle_latency_ratio"), latency_rows)
        fp16 = [r for r in out["pipeline"] if r["precision"] == "fp16" and r["processes"] == 1]
        if fp16:
            detector = Detector.load(CONFIG, checkpoint, device=args.device, fp16=True)
            best = max(fp16, key=lambda r: r["frames_per_s"])
            out["stages"] = run.stages(bench, detector, MODEL, f"Co-DINO Swin-L, {torch.cuda.get_device_name()}",
                                       min(40, args.frames), best["batch"], best["frames_per_s"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="worker processes a card")
    parser.add_argument("--frames", type=int, default=100, help="frames of each pipeline job")
    parser.add_argument("--samples", type=int, default=10, help="single-frame jobs per latency figure")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("codetr_gpu: no GPU on this machine (torch sees no CUDA device); nothing was measured. "
              "Run `make bench` on a machine with one for the Co-DINO Swin-L tables.", file=sys.stderr)
        return 2
    torch.cuda.set_device(args.device)
    bare_rows = bare(args)
    report = {
        "config": CONFIG.name,
        "frame": f"{FRAME[1]}x{FRAME[0]}",
        "seed": {"frames_per_s": SEED_FRAMES_PER_S, "memory_bytes": SEED_MEMORY_BYTES},
        "iterations": args.iterations,
        "rows": bare_rows,
        **pipeline(args, bare_rows),
        "machine": {"gpu": torch.cuda.get_device_name(args.device), "torch": torch.__version__,
                    "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "platform": platform.platform()},
    }
    run.RESULTS.mkdir(exist_ok=True)
    (run.RESULTS / "codetr_gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
