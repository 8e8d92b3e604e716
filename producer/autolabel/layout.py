"""Where everything of a job lives in the bucket. Every key a job writes is made here.

    jobs/JOB_ID/manifest.json               spec, video metadata, every frame (JobManifest)
    jobs/JOB_ID/frames/FRAME_ID.jpg         sampled frames uploaded by the producer
    jobs/JOB_ID/detections/FRAME_ID.json    one FrameResult per labeled frame
    jobs/JOB_ID/coco.json                   COCO detection export
    jobs/JOB_ID/labelstudio.json            Label Studio import file
    jobs/JOB_ID/summary.json                counts per class, failed frames, timings
    jobs/JOB_ID/cvat-video.xml              CVAT for video 1.1 tracks (jobs with tracking)
    jobs/JOB_ID/labelstudio-video.json      Label Studio video tracks (video jobs with tracking)
    jobs/JOB_ID/mot.txt                     MOTChallenge tracks (jobs with tracking)
"""

from __future__ import annotations

from autolabel.contract import check_id

EXPORT_NAMES = ("coco.json", "labelstudio.json", "summary.json")
# Written beside them for a job submitted with tracking; the summary lists which a job has.
TRACK_EXPORT_NAMES = ("cvat-video.xml", "labelstudio-video.json", "mot.txt")


def job_prefix(job_id: str) -> str:
    return f"jobs/{check_id(job_id, 'job_id')}/"


def manifest_key(job_id: str) -> str:
    return job_prefix(job_id) + "manifest.json"


def frame_key(job_id: str, frame_id: str) -> str:
    return job_prefix(job_id) + f"frames/{check_id(frame_id, 'frame_id')}.jpg"


def detection_key(job_id: str, frame_id: str) -> str:
    return job_prefix(job_id) + f"detections/{check_id(frame_id, 'frame_id')}.json"


def export_key(job_id: str, name: str) -> str:
    if name not in EXPORT_NAMES + TRACK_EXPORT_NAMES:
        raise ValueError(f"unknown export {name!r}; exports are {', '.join(EXPORT_NAMES + TRACK_EXPORT_NAMES)}")
    return job_prefix(job_id) + name


def video_frame_id(index: int) -> str:
    """Frame ids of sampled video frames sort in frame order."""
    return f"{index:08d}"
