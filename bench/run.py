"""Pipeline benchmarks against a real redis-server, S3 server and worker processes: ``make bench``.

With the simulated device (bench/simdevice.py: Co-DINO's real data path, a forward pass that holds
a shared card for t(B) = a + b B without CPU; every figure labeled "simulated device"):

    sim_pipeline   a 2,000-frame backlog job: the card's busy share over the job (efficiency), the gaps
                   between passes, the worker processes' CPU a frame
    sim_latency    single-frame tasks into an idle worker: submit-to-result / the pass's device time
    sim_scaling    frames/s with 1, 2, 3 processes per card at batch 1, 2, 4, against the card's bound
    stages         CPU ms a frame costs outside the device, by stage: the worker's own functions run
                   one frame after another in this process, each timed on its thread's CPU clock

With the real embedded model on CPU (docs/embedded-model.md):

    cpu            the bare in-process loop and the pipeline, with the model's threads capped at
                   cores - 1 (AUTOLABEL_TORCH_THREADS; the I/O gets a core) and uncapped: efficiency
                   (pipeline frames/s over bare frames/s) and the idle latency ratio

Prints the tables and writes bench/results/bench.json (keys sim_efficiency, sim_idle_latency_ratio,
cpu_capped_efficiency, cpu_capped_idle_latency_ratio, ...). bench/codetr_gpu.py runs the same
tables with the real Co-DINO Swin-L on a GPU. A job's time runs from its submit to its last frame
labeled (labeled_at); the exports written after it are not part of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import analysis
from autolabel import layout
from autolabel.client import LabelingClient
from autolabel.contract import DetectOptions, FrameRef, FrameResult, Sampling
from autolabel.devservices import DevStack, free_port, wait_until
from autolabel.settings import Settings
from autolabel.synth import generate_video
from autolabel.video import encode_jpeg, iter_sampled_frames

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
AUTOLABEL = str(Path(sys.executable).with_name("autolabel"))
SIM_MODEL = "simulated-co-dino"
SIM = "simulated device"


def machine() -> dict[str, object]:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def table(title: str, header: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    for row in (header, *rows):
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class ModelSpec:
    """What the worker processes run: their environment, and the batch size is the bench's."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pool:
    pids: list[int]
    warmups: list[dict[str, Any]]

    def cpu_s(self) -> float:
        return sum(process_cpu_s(pid) for pid in self.pids)


class Bench:
    def __init__(self, stack: DevStack, frames: int, device: str) -> None:
        self.stack, self.device = stack, device
        self.settings: Settings = stack.settings(device=device)
        self.client = LabelingClient(self.settings)
        self.refs, self.jpegs = self._upload_frames(frames)

    def _upload_frames(self, count: int) -> tuple[list[FrameRef], list[bytes]]:
        """Frames of a synthetic 1280x720 video, uploaded once and reused by every run."""
        with tempfile.TemporaryDirectory() as tmp:
            video = Path(tmp) / "bench.mp4"
            generate_video(video, Path(tmp) / "gt.json", width=1280, height=720, fps=25, seconds=count / 25, seed=99)
            refs, jpegs = [], []
            for frame in iter_sampled_frames(video, Sampling()):
                data = encode_jpeg(frame.image)
                key = f"bench/frames/{frame.index:08d}.jpg"
                self.client.store.put_bytes(key, data, "image/jpeg")
                refs.append(FrameRef(frame_id=f"{frame.index:08d}", key=key, index=frame.index))
                jpegs.append(data)
        return refs[:count], jpegs[:count]

    def client_for(self, spec: ModelSpec) -> LabelingClient:
        return LabelingClient(self.stack.settings(device=self.device, model=spec.name, **spec.settings))

    @contextmanager
    def workers(self, spec: ModelSpec, batch: int, procs: int) -> Iterator[Pool]:
        port = free_port()
        env = self.stack.subprocess_env(AUTOLABEL_DEVICE=self.device, AUTOLABEL_MODEL=spec.name, **spec.env)
        process = subprocess.Popen(
            [AUTOLABEL, "worker", "--devices", "cpu" if self.device == "cpu" else "all", "--procs-per-device",
             str(procs), "--batch-size", str(batch), "--health-port", str(port), "--loglevel", "WARNING"],
            env=env, stdout=subprocess.DEVNULL)

        def ready() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
                return json.loads(response.read()) if response.status == 200 else {}

        try:
            wait_until(lambda: _quiet(ready), "workers ready", timeout=900)
            status = ready()
            yield Pool([p["pid"] for p in status["processes"]], [p["warmup"] for p in status["processes"]])
        finally:
            process.terminate()
            process.wait(180)

    def job(self, client: LabelingClient, refs: list[FrameRef], batch: int) -> tuple[str, float, float]:
        """Submit a backlog job and wait for it: its id, when it was submitted and when its last frame
        was labeled (time.time() seconds)."""
        submitted = time.time()
        job_id = client.submit_frames(refs, batch_size=batch)
        status = client.wait(job_id, poll_s=0.2)
        assert status.done == len(refs) and status.labeled_at is not None, status
        return job_id, submitted, status.labeled_at

    def single_latencies(self, client: LabelingClient, batch: int, samples: int) -> list[tuple[float, float, float]]:
        """(submitted, submit returned, labeled) of single-frame jobs, each into an idle worker."""
        times = []
        for ref in self.refs[:samples]:
            started = time.time()
            job_id = client.submit_frames([ref], batch_size=batch)
            enqueued = time.time()
            # The worker stamps the moment the frame's result is recorded (labeled_at), so this
            # client can wait without polling hard for CPU the worker needs. The job's exports
            # (finalize) come after and are not part of a frame's latency.
            while (labeled_at := client.status(job_id).labeled_at) is None:
                time.sleep(0.05)
            times.append((started, enqueued, labeled_at))
            client.wait(job_id, poll_s=0.05)  # the next frame meets an idle worker
        return times

    def decoded(self, count: int) -> list[Any]:
        from autolabel_worker.frames import decode_image

        return [decode_image(data, self.settings.max_frame_pixels) for data in self.jpegs[:count]]


def _quiet(probe: Callable[[], Any]) -> Any:
    try:
        return probe()
    except Exception:
        return None


# ---------------------------------------------------------------- simulated device


class SimCard:
    """A fresh simulated card for each pool, with the checkpoint file resolve_model wants (no weights)."""

    def __init__(self, root: Path, law: Any) -> None:
        import simdevice

        self.directory = Path(tempfile.mkdtemp(prefix="card-", dir=root))
        simdevice.SimulatedCard.create(self.directory, law).close()
        self.checkpoint = self.directory / "simulated.pth"
        torch.save({"state_dict": {}}, self.checkpoint)
        self.spec = ModelSpec(SIM_MODEL, env={
            "AUTOLABEL_CONFIGS_DIR": str(BENCH / "configs"), "AUTOLABEL_PLUGIN_DIRS": str(BENCH),
            "AUTOLABEL_CHECKPOINT": str(self.checkpoint), simdevice.CARD_ENV: str(self.directory)},
            settings={"configs_dir": str(BENCH / "configs")})

    def passes(self) -> list[Any]:
        import simdevice

        return simdevice.read_passes(self.directory)


def sim_pipeline(bench: Bench, root: Path, law: Any, frames: int, batch: int) -> dict[str, Any]:
    card = SimCard(root, law)
    refs = bench.refs[:frames]
    with bench.workers(card.spec, batch, 1) as pool:
        cpu_before = pool.cpu_s()
        _, submitted, labeled = bench.job(bench.client_for(card.spec), refs, batch)
        worker_cpu_ms = 1000 * (pool.cpu_s() - cpu_before) / len(refs)
    passes = [p for p in card.passes() if submitted <= p.start < labeled]  # not the warm-up pass
    intervals = [(p.start, p.end) for p in passes]
    gaps_ms = [1000 * g for g in analysis.gaps(intervals)]
    result = {
        "label": SIM, "frames": len(refs), "batch_size": batch, "seconds": labeled - submitted,
        "frames_per_s": len(refs) / (labeled - submitted), "card_bound_frames_per_s": law.frames_per_s(batch),
        "efficiency": analysis.busy_share(intervals, (submitted, labeled)),
        "passes": len(passes), "mean_frames_per_pass": sum(p.frames for p in passes) / len(passes),
        "first_pass_after_submit_s": passes[0].start - submitted,
        "gap_median_ms": statistics.median(gaps_ms), "gap_p99_ms": analysis.percentile(gaps_ms, 99),
        "gap_max_ms": max(gaps_ms), "worker_cpu_ms_per_frame": worker_cpu_ms,
    }
    table(f"sim_pipeline ({SIM}: t(B) = {law.fixed_s} + {law.per_frame_s} B s)",
          ("frames", "batch", "frames/s", "card bound", "efficiency", "frames/pass", "gap median ms",
           "gap p99 ms", "worker CPU ms/frame"),
          [(len(refs), batch, f"{result['frames_per_s']:.2f}", f"{law.frames_per_s(batch):.2f}",
            f"{result['efficiency']:.3f}", f"{result['mean_frames_per_pass']:.2f}", f"{result['gap_median_ms']:.1f}",
            f"{result['gap_p99_ms']:.1f}", f"{worker_cpu_ms:.1f}")])
    return result


def sim_latency(bench: Bench, root: Path, law: Any, batch: int, samples: int) -> dict[str, Any]:
    card = SimCard(root, law)
    with bench.workers(card.spec, batch, 1):
        times = bench.single_latencies(bench.client_for(card.spec), batch, samples)
    passes = card.passes()
    ratios, overheads_ms, parts_ms = [], [], []
    for submitted, enqueued, labeled in times:
        # The warm-up pass ran before any submit; each frame's pass is the one inside its wait.
        (own,) = [p for p in passes if submitted <= p.start and p.end <= labeled]
        ratios.append((labeled - submitted) / (own.end - own.start))
        overheads_ms.append(1000 * ((labeled - submitted) - (own.end - own.start)))
        # Where the overhead is: the client's submit; from the enqueue to the pass (delivery, fetch,
        # decode, pipeline, collate, hand-offs); from the pass to the result recorded (postprocess, upload, Redis).
        parts_ms.append((1000 * (enqueued - submitted), 1000 * (own.start - enqueued), 1000 * (labeled - own.end)))
    submit_ms, to_pass_ms, after_pass_ms = (statistics.median(part) for part in zip(*parts_ms))
    result = {"label": SIM, "samples": samples, "device_s": law.pass_seconds(1),
              "idle_latency_ratio": statistics.median(ratios), "overhead_median_ms": statistics.median(overheads_ms),
              "submit_median_ms": submit_ms, "enqueue_to_pass_median_ms": to_pass_ms,
              "pass_to_result_median_ms": after_pass_ms, "ratios": ratios}
    table(f"sim_latency ({SIM})", ("device s", "overhead median ms", "submit ms", "enqueue-to-pass ms",
                                   "pass-to-result ms", "idle_latency_ratio"),
          [(f"{law.pass_seconds(1):.3f}", f"{result['overhead_median_ms']:.1f}", f"{submit_ms:.1f}",
            f"{to_pass_ms:.1f}", f"{after_pass_ms:.1f}", f"{result['idle_latency_ratio']:.3f}")])
    return result


def sim_scaling(bench: Bench, root: Path, law: Any, frames: int, batches: list[int],
                procs_list: list[int]) -> list[dict[str, Any]]:
    rows, out = [], []
    for procs in procs_list:
        for batch in batches:
            card = SimCard(root, law)
            with bench.workers(card.spec, batch, procs):
                _, submitted, labeled = bench.job(bench.client_for(card.spec), bench.refs[:frames], batch)
            intervals = [(p.start, p.end) for p in card.passes() if submitted <= p.start < labeled]
            fps = frames / (labeled - submitted)
            busy = analysis.busy_share(intervals, (submitted, labeled))
            out.append({"label": SIM, "processes": procs, "batch_size": batch, "frames": frames, "frames_per_s": fps,
                        "card_bound_frames_per_s": law.frames_per_s(batch), "card_busy": busy})
            rows.append((procs, batch, f"{fps:.2f}", f"{law.frames_per_s(batch):.2f}", f"{busy:.3f}"))
    table(f"sim_scaling ({SIM}, {frames} frames a run)", ("processes", "batch", "frames/s", "card bound", "card busy"),
          rows)
    return out


def sim_stages(bench: Bench, root: Path, law: Any, frames: int, batch: int) -> dict[str, Any]:
    from autolabel_worker.detector import Detector

    card = SimCard(root, law)
    os.environ.update(card.spec.env)  # the card this process's simulated model uses
    sys.path.insert(0, str(BENCH))
    detector = Detector.load(BENCH / "configs" / f"{SIM_MODEL}.py", card.checkpoint)
    return stages(bench, detector, SIM_MODEL, SIM, frames, batch, law.frames_per_s(batch))


def stages(bench: Bench, detector: Any, model: str, label: str, frames: int, batch: int,
           card_fps: float) -> dict[str, Any]:
    """The worker's own stage functions, one after another on this thread, each on the thread's CPU clock."""
    from autolabel_worker.detect import result_stamp
    from autolabel_worker.frames import decode_image

    store, progress = bench.client.store, bench.client.progress
    options = DetectOptions(model=model)
    job_id = f"bench-stages-{int(time.time())}"
    progress.register(job_id, total=frames, model=model, source="bench")
    cpu = dict.fromkeys(analysis.STAGES, 0.0)

    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        started = time.thread_time()
        value = fn()
        cpu[stage] += time.thread_time() - started
        return value

    refs = bench.refs[:frames]
    for i in range(0, len(refs), batch):
        chunk = refs[i:i + batch]
        datas = [timed("fetch", lambda ref=ref: store.get_bytes(ref.key)) for ref in chunk]
        images = [timed("decode", lambda d=d: decode_image(d, bench.settings.max_frame_pixels)) for d in datas]
        prepared = [timed("pipeline", lambda im=im: detector.prepare(im)) for im in images]
        collated = timed("collate", lambda: detector.collate(prepared))
        raws = timed("forward_host", lambda: detector.forward(collated))
        detections = [timed("postprocess", lambda r=r: detector.postprocess(r, 0.3)) for r in raws]
        for ref, image, found in zip(chunk, images, detections):
            result = FrameResult(job_id=job_id, frame_id=ref.frame_id, frame_index=ref.index, timestamp=ref.timestamp,
                                 width=image.shape[1], height=image.shape[0], model=model,
                                 model_version="bench", detections=tuple(found))
            stamp = result_stamp("bench", options, ref.sha256 or "")
            timed("upload", lambda r=result, s=stamp: store.put_json(layout.detection_key(job_id, r.frame_id), r, s))
        ids = [ref.frame_id for ref in chunk]
        timed("redis", lambda: progress.add_timing(job_id, frame_ids=ids, device_seconds=0.0,
                                                   frames_per_pass=len(ids) ** 2, passes=1.0))
        timed("redis", lambda: progress.record(job_id, done=ids, failed={}))
    split = analysis.stage_split(cpu, len(refs))
    total = sum(split.values())
    result = {"label": label, "frames": len(refs), "batch_size": batch, "cpu_ms_per_frame": split,
              "cpu_ms_per_frame_total": total, "card_frames_per_s": card_fps,
              "cores_per_card": analysis.cores_per_card(total, card_fps)}
    table(f"stages ({label}; CPU ms a frame outside the device, batch {batch})", (*analysis.STAGES, "total",
          f"cores a card at {card_fps:.2f} frames/s"),
          [(*(f"{split[s]:.2f}" for s in analysis.STAGES), f"{total:.1f}", f"{result['cores_per_card']:.2f}")])
    return result


# ---------------------------------------------------------------- the embedded model on CPU


def bare_seconds(detector: Any, images: list[Any], batch: int) -> float:
    """Seconds of a plain loop over decoded frames, a batch a call."""
    started = time.perf_counter()
    for i in range(0, len(images), batch):
        detector.predict(images[i:i + batch], score_threshold=0.3)
    return time.perf_counter() - started


def cpu(bench: Bench, frames: int, batch: int, samples: int, rounds: int) -> dict[str, Any]:
    from autolabel_worker.detector import Detector
    from autolabel_worker.models import resolve_model

    cores = os.cpu_count() or 1
    out: dict[str, Any] = {}
    rows = []
    default_threads = torch.get_num_threads()
    model = resolve_model(bench.settings)
    images = bench.decoded(frames)
    per_round = frames // rounds
    for name, threads in (("capped", max(1, cores - 1)), ("uncapped", default_threads)):
        spec = ModelSpec(bench.settings.model, env={"AUTOLABEL_TORCH_THREADS": str(threads)} if name == "capped" else {})
        torch.set_num_threads(threads)
        detector = Detector.load(model.config, model.checkpoint, device=bench.device)
        detector.predict(images[:batch], score_threshold=0.3)
        bare_s = pipeline_s = 0.0
        round_efficiencies = []
        with bench.workers(spec, batch, 1):
            # The bare loop and the pipeline take turns on slices of the frames (the workers idle
            # while the loop runs): this machine's speed drifts by 10 to 20 % within minutes, and
            # turns of a minute or less weigh that drift on both sides of the ratio alike.
            for part in (slice(i * per_round, (i + 1) * per_round) for i in range(rounds)):
                loop_s = bare_seconds(detector, images[part], batch)
                _, submitted, labeled = bench.job(bench.client, bench.refs[part], batch)
                bare_s, pipeline_s = bare_s + loop_s, pipeline_s + labeled - submitted
                round_efficiencies.append(loop_s / (labeled - submitted))
            # Lone passes of the bare loop before and after the lone frames, for the same reason.
            singles = [bare_seconds(detector, [image], 1) for image in images[:samples]]
            times = bench.single_latencies(bench.client, batch, samples)
            singles += [bare_seconds(detector, [image], 1) for image in images[:samples]]
        pipeline_fps, bare_fps = rounds * per_round / pipeline_s, rounds * per_round / bare_s
        single = statistics.median(singles)
        latency = statistics.median(labeled_at - started for started, _, labeled_at in times)
        out[name] = {"model_threads": threads, "frames": rounds * per_round, "batch_size": batch, "rounds": rounds,
                     "pipeline_fps": pipeline_fps, "bare_fps": bare_fps, "efficiency": pipeline_fps / bare_fps,
                     "round_efficiencies": round_efficiencies, "submit_to_result_s": latency,
                     "bare_single_frame_s": single, "idle_latency_ratio": latency / single}
        rows.append((name, threads, f"{pipeline_fps:.2f}", f"{bare_fps:.2f}", f"{pipeline_fps / bare_fps:.3f}",
                     f"{min(round_efficiencies):.3f} - {max(round_efficiencies):.3f}", f"{latency:.3f}",
                     f"{single:.3f}", f"{latency / single:.3f}"))
    torch.set_num_threads(default_threads)
    table(f"cpu (the embedded model, {cores} cores, {rounds} rounds of {per_round} frames, batch {batch})",
          ("model threads", "n", "pipeline frames/s", "bare frames/s", "efficiency", "rounds' efficiency",
           "submit-to-result s", "bare single s", "idle_latency_ratio"), rows)
    return out


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures, each beside its target (docs/performance.md)."""
    keys: dict[str, Any] = {}
    if "sim_pipeline" in results:
        keys["sim_efficiency"] = results["sim_pipeline"]["efficiency"]
        keys["sim_gap_median_ms"] = results["sim_pipeline"]["gap_median_ms"]
        keys["sim_gap_p99_ms"] = results["sim_pipeline"]["gap_p99_ms"]
    if "sim_latency" in results:
        keys["sim_idle_latency_ratio"] = results["sim_latency"]["idle_latency_ratio"]
    if "stages" in results:
        keys["cpu_ms_per_frame_outside_device"] = results["stages"]["cpu_ms_per_frame_total"]
    for name in ("capped", "uncapped"):
        if name in results.get("cpu", {}):
            keys[f"cpu_{name}_efficiency"] = results["cpu"][name]["efficiency"]
            keys[f"cpu_{name}_idle_latency_ratio"] = results["cpu"][name]["idle_latency_ratio"]
    return keys


ALL = ("sim_pipeline", "sim_latency", "sim_scaling", "stages", "cpu")
TARGETS = {"sim_efficiency": (">=", 0.97), "sim_idle_latency_ratio": ("<=", 1.05),
           "cpu_capped_efficiency": (">=", 0.90), "cpu_capped_idle_latency_ratio": ("<=", 1.10)}


def main() -> None:
    import simdevice

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(ALL), help=f"any of {', '.join(ALL)} (default: all; a "
                        "subset updates those tables in an existing --output)")
    parser.add_argument("--sim-frames", type=int, default=2000, help="frames of the simulated backlog job (the "
                        "issue's 2,000: about 6 minutes at batch 4, 2000/4 x t(4))")
    parser.add_argument("--sweep-frames", type=int, default=100, help="frames per sim_scaling run")
    parser.add_argument("--stage-frames", type=int, default=100, help="frames through the stages run")
    parser.add_argument("--cpu-frames", type=int, default=500, help="frames through the CPU pipeline (and the "
                        "bare loop) in each setting")
    parser.add_argument("--cpu-rounds", type=int, default=4, help="turns the bare loop and the CPU pipeline take "
                        "on as many slices of those frames")
    parser.add_argument("--samples", type=int, default=10, help="single-frame jobs per latency figure")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--fixed-s", type=float, default=simdevice.TimingLaw.fixed_s, help="the card's a")
    parser.add_argument("--per-frame-s", type=float, default=simdevice.TimingLaw.per_frame_s, help="the card's b")
    parser.add_argument("--output", type=Path, default=RESULTS / "bench.json")
    args = parser.parse_args()
    if not 1 <= args.cpu_rounds <= args.cpu_frames:
        parser.error(f"--cpu-rounds must be from 1 to --cpu-frames ({args.cpu_frames}), not {args.cpu_rounds}")
    law = simdevice.TimingLaw(args.fixed_s, args.per_frame_s)
    results: dict[str, Any] = {"law": {"label": SIM, "fixed_s": law.fixed_s, "per_frame_s": law.per_frame_s}}
    frames = max(args.sim_frames, args.sweep_frames, args.stage_frames, args.cpu_frames, args.samples)
    with DevStack() as stack, tempfile.TemporaryDirectory(prefix="bench-cards-") as cards:
        bench = Bench(stack, frames, "cpu")
        root = Path(cards)
        for name in args.names:
            if name == "sim_pipeline":
                results[name] = sim_pipeline(bench, root, law, args.sim_frames, args.batch_size)
            elif name == "sim_latency":
                results[name] = sim_latency(bench, root, law, args.batch_size, args.samples)
            elif name == "sim_scaling":
                results[name] = sim_scaling(bench, root, law, args.sweep_frames, args.batches, args.procs)
            elif name == "stages":
                results[name] = sim_stages(bench, root, law, args.stage_frames, args.batch_size)
            elif name == "cpu":
                results[name] = cpu(bench, args.cpu_frames, args.batch_size, args.samples, args.cpu_rounds)
            else:
                parser.error(f"unknown benchmark {name!r}")
    if args.output.is_file() and set(args.names) != set(ALL):
        # A subset run updates its own tables and keeps the others the file already has.
        kept = json.loads(args.output.read_text())
        results = {**{name: kept[name] for name in ALL if name in kept}, **results}
    headline = summary(results)
    rows = []
    for key, value in headline.items():
        op, target = TARGETS.get(key, ("", None))
        met = "" if target is None else ("met" if (value >= target if op == ">=" else value <= target) else "NOT met")
        rows.append((key, f"{value:.3f}", f"{op} {target}" if target else "", met))
    table("summary (sim_*: simulated device; cpu_*: the embedded model on this machine's CPU)",
          ("figure", "value", "target", ""), rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({**headline, **results, "machine": machine()}, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
