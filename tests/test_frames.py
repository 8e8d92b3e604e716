"""Frame decoding refuses bad images with a reason, and reads the size from the header first; a
task's frames are fetched concurrently, a lone one on the task's own thread."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from autolabel.contract import FrameRef
from autolabel.errors import FrameError
from autolabel.storage import ObjectStore
from autolabel_worker.frames import decode_image, load_frames


def jpeg(width: int, height: int, colour: tuple[int, int, int] = (200, 30, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_decodes_to_bgr() -> None:
    image = decode_image(jpeg(64, 48), max_pixels=10_000)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    blue, green, red = image[24, 32].astype(int)
    assert red > 180 and blue < 40


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_other_colour_modes_decode_to_three_channel_bgr(mode: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 16), (200, 30, 10)).convert(mode).save(buffer, "JPEG" if mode == "CMYK" else "PNG")
    image = decode_image(buffer.getvalue(), max_pixels=10_000)
    assert image.shape == (16, 32, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    if mode != "L":
        blue, _, red = image[8, 16].astype(int)
        assert red > 150 and blue < 60


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n garbage", "not a readable image"),
        (b"plain text", "not a readable image"),
        (jpeg(64, 48)[:200], "truncated"),
    ],
)
def test_bad_frames_fail_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode_image(data, max_pixels=10_000)


def test_oversized_frame_is_refused_from_its_header() -> None:
    # A JPEG whose start-of-frame claims 8000x6000 with a 64x48 image behind it: only the
    # header can have been read when the refusal names the claimed size.
    data = bytearray(jpeg(64, 48))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (6000).to_bytes(2, "big") + (8000).to_bytes(2, "big")
    with pytest.raises(FrameError, match="8000x6000, above the limit of 40000000"):
        decode_image(bytes(data), max_pixels=40_000_000)


@pytest.mark.integration
def test_a_lone_frame_is_fetched_on_the_calling_thread_and_a_batch_concurrently(
        store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # A pool's thread start waits for the GIL while another thread computes: up to a millisecond
    # on a lone frame's path, for nothing. A batch still fetches in parallel, and fails frame by frame.
    store.put_bytes("frames-test/good.jpg", jpeg(64, 48), "image/jpeg")
    store.put_bytes("frames-test/corrupt.jpg", b"\xff\xd8 not a jpeg", "image/jpeg")
    fetched_on = []
    get_bytes = store.get_bytes

    def spied(key: str) -> bytes:
        fetched_on.append(threading.current_thread())
        return get_bytes(key)

    monkeypatch.setattr(store, "get_bytes", spied)
    good = FrameRef(frame_id="good", key="frames-test/good.jpg", index=0)
    loaded, failures = load_frames(store, [good], max_pixels=10**6, threads=4)
    assert [frame.ref.frame_id for frame in loaded] == ["good"] and failures == {}
    assert fetched_on == [threading.current_thread()]

    fetched_on.clear()
    refs = [FrameRef(frame_id="corrupt", key="frames-test/corrupt.jpg", index=1), good,
            FrameRef(frame_id="missing", key="frames-test/missing.jpg", index=2)]
    loaded, failures = load_frames(store, refs, max_pixels=10**6, threads=4)
    assert [frame.ref.frame_id for frame in loaded] == ["good"]
    assert set(failures) == {"corrupt", "missing"}
    assert "FrameError" in failures["corrupt"] and "ObjectNotFoundError" in failures["missing"]
    assert threading.current_thread() not in fetched_on and len(fetched_on) == 3
