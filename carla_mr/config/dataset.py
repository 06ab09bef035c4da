"""The scenario's ``recorder`` and ``perception`` sections (see docs/dataset.md)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from carla_mr.schema import StrictModel
from carla_mr.config.camera import CameraSpec


class RecorderConfig(StrictModel):
    """Camera dataset recording: frames, COCO + YOLO labels, poses, manifest."""

    enabled: bool = False
    camera: CameraSpec = Field(default_factory=CameraSpec, description="The camera on each recording AV.")
    cameras: int = Field(1, ge=1, le=64, description="How many AVs carry a camera (the lowest AV ids).")
    every_k: int = Field(1, ge=1, description="Record every k-th tick.")
    warmup_s: float = Field(0.0, ge=0, description="Simulated seconds before the first recorded frame.")
    max_frames: Optional[int] = Field(None, ge=1, description="Stop after this many recorded ticks.")
    min_box_px: int = Field(4, ge=0, description="Labels whose box is narrower or lower (pixels) are not exported.")
    min_visible: float = Field(0.0, ge=0, le=1, description="Labels less visible than this share are not exported.")
    box: Literal["full", "visible"] = Field("visible", description="Export the box of the face's visible pixels "
                                                                  "('visible') or its whole projected face clipped "
                                                                  "to the image ('full', also kept as amodal_bbox).")
    depth: Literal["png16", "npy", "none"] = Field(
        "png16", description="Per-frame depth (metres along the camera axis): 16-bit PNG in centimetres, float32 "
                             ".npy, or none. Only backends with a depth pass (the OpenGL camera) write it.")
    kinds: Optional[list[str]] = Field(None, description="Sign kinds to export (default: all, traffic lights included).")
    image_format: Literal["png", "jpg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)
    png_compression: int = Field(1, ge=0, le=9)
    swap_share: float = Field(0.0, ge=0, le=1, description="Share of the signs (traffic lights excluded) shown with "
                                                           "generated textures.")
    texture_dir: Optional[str] = Field(None, description="Folder of generated sign images (<kind>/*.png or "
                                                         "<kind>_*.png); default: procedural variants.")
    texture_source: Literal["auto", "folder", "genai", "procedural"] = Field(
        "auto", description="Where swapped textures come from: auto = texture_dir, then the genai model when "
                            "available, then procedural variants.")
    genai_model: Optional[str] = Field(None, description="A TSDreamBooth model folder (default: the committed one).")
    genai_steps: int = Field(20, ge=1, le=1000, description="Sampling steps for genai_model.")
    durable_every: int = Field(50, ge=1, description="fsync the frames written so far every N recorded ticks.")
    skip_stationary_after_s: Optional[float] = Field(
        2.0, ge=0, description="Skip a camera's frames once its vehicle has been stationary for longer than this "
                               "(simulated seconds; the first seconds of each stop are kept). null: never skip.")
    stationary_speed_mps: float = Field(0.3, ge=0, description="Below this speed (m/s) a vehicle is stationary.")

    @field_validator("kinds")
    @classmethod
    def _kinds_not_empty(cls, v):
        if v is not None and not v:
            raise ValueError("must name at least one kind, or be left out for all kinds")
        return v


class PerceptionConfig(StrictModel):
    """Perception in the loop: a model under test on the crops of visible signs."""

    enabled: bool = False
    model: str = Field("default", description="'default' (the project's crop CNN trained on original-texture "
                                              "frames, else the template matcher without torch), 'validator' (the "
                                              "genai validator), 'template', or a dotted path 'module:attr' to a "
                                              "callable or torch module.")
    checkpoint: Optional[str] = Field(None, description="Weights for the model (a torch state_dict / validator dir).")
    every_k: int = Field(1, ge=1, description="Evaluate every k-th tick.")
    min_box_px: int = Field(8, ge=1, description="Skip crops smaller than this (pixels, min side).")
    min_visible: float = Field(0.0, ge=0, le=1)
    crop_margin: float = Field(0.1, ge=0, le=1, description="Extra context around each box, share of its size.")
    include_traffic_lights: bool = False
    distance_bands_m: list[float] = Field(default_factory=lambda: [10.0, 20.0, 40.0, 80.0])
    visibility_bands: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75])
    camera: Optional[CameraSpec] = Field(None, description="Default: the recorder's camera.")
    detector: Optional[str] = Field(None, description="A detector under test on full frames ('module:attr': a "
                                                      "torchvision-style or Ultralytics model, or an object with "
                                                      "detect()); scored with COCOeval. null: crops only.")
    detector_checkpoint: Optional[str] = Field(None, description="Weights (state dict) for the detector.")
    detector_min_score: float = Field(0.0, ge=0, le=1, description="Drop detections scoring below this.")

    @field_validator("distance_bands_m", "visibility_bands")
    @classmethod
    def _increasing(cls, v):
        if any(b <= a for a, b in zip(v, v[1:])) or any(x <= 0 for x in v):
            raise ValueError("band edges must be positive and strictly increasing")
        return v
