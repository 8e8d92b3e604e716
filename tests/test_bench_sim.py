"""The pure parts of the benchmarks (bench/): the simulated device's timing law and card lock, the
busy share and gaps read from its passes, and the stage split. No timed assertions: the lock test
checks the order of the passes, not their length."""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import analysis  # noqa: E402
import simdevice  # noqa: E402


def test_timing_law_defaults_are_the_seeds_co_dino_frame() -> None:
    law = simdevice.TimingLaw()
    assert law.pass_seconds(1) == pytest.approx(0.2)  # the seed: 5 frames/s at B = 1
    assert law.pass_seconds(4) == pytest.approx(law.fixed_s + 4 * law.per_frame_s)
    assert law.pass_seconds(4) - law.pass_seconds(2) == pytest.approx(2 * law.per_frame_s)
    assert law.frames_per_s(4) == pytest.approx(4 / law.pass_seconds(4))
    with pytest.raises(ValueError, match="at least one frame"):
        law.pass_seconds(0)


def _one_pass(directory: Path, start: multiprocessing.synchronize.Event) -> None:
    card = simdevice.SimulatedCard(directory, simdevice.TimingLaw(fixed_s=0.5, per_frame_s=0.0))
    start.wait()
    card.run_pass(1)
    card.close()


def test_processes_sharing_a_card_take_turns(tmp_path: Path) -> None:
    simdevice.SimulatedCard.create(tmp_path, simdevice.TimingLaw()).close()
    context = multiprocessing.get_context("fork")
    start = context.Event()
    processes = [context.Process(target=_one_pass, args=(tmp_path, start)) for _ in range(2)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    first, second = simdevice.read_passes(tmp_path)
    assert first.pid != second.pid
    assert second.asked < first.end  # both wanted the card at once...
    assert second.start >= first.end  # ...and the second got it only after the first gave it back


def test_the_simulated_model_refuses_to_build_outside_the_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(simdevice.CARD_ENV, raising=False)
    with pytest.raises(RuntimeError, match="for bench/run.py only"):
        simdevice.SimulatedDetector(data_preprocessor=simdevice.SimulatedTransfer())


def test_busy_share_counts_overlaps_once_and_clips_to_the_window() -> None:
    passes = [(0.0, 2.0), (1.0, 3.0), (5.0, 6.0), (9.0, 12.0)]
    assert analysis.busy_seconds(passes, (0.0, 10.0)) == pytest.approx(3.0 + 1.0 + 1.0)
    assert analysis.busy_share(passes, (0.0, 10.0)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="empty window"):
        analysis.busy_share(passes, (1.0, 1.0))


def test_gaps_and_percentiles() -> None:
    assert analysis.gaps([(2.0, 3.0), (0.0, 1.0), (3.5, 4.0), (3.9, 5.0)]) == pytest.approx([1.0, 0.5, 0.0])
    values = [float(v) for v in range(1, 101)]
    assert analysis.percentile(values, 50) == 50.0
    assert analysis.percentile(values, 99) == 99.0
    assert analysis.percentile([7.0], 99) == 7.0


def test_stage_split_and_cores_per_card() -> None:
    split = analysis.stage_split({"fetch": 0.5, "decode": 1.5, "upload": 0.25}, frames=100)
    assert split["fetch"] == pytest.approx(5.0) and split["decode"] == pytest.approx(15.0)
    assert split["pipeline"] == 0.0 and list(split) == list(analysis.STAGES)
    # 40 ms of CPU a frame at 25 frames/s a card: one core a card.
    assert analysis.cores_per_card(sum(split.values()) + 17.5, 25.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown stages"):
        analysis.stage_split({"resize": 1.0}, frames=1)
