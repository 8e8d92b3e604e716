"""The one detection type used everywhere: worker output, result files and exports."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Detection(BaseModel):
    """One box in original-frame pixels, corners inclusive of the object's extent."""

    model_config = ConfigDict(frozen=True)

    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in original-frame pixels")
    score: float = Field(ge=0.0, le=1.0)
    class_id: int = Field(ge=0)
    class_name: str
    track_id: int | None = Field(None, ge=1, description="the object's track across the job's frames (jobs "
                                 "submitted with tracking); null without tracking")

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def xywh(self) -> tuple[float, float, float, float]:
        """COCO's [x, y, w, h] form of the box."""
        x1, y1, _, _ = self.box
        return (x1, y1, self.width, self.height)
