"""The scenario's ``genai`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from carla_mr.config.vocab import COLOURS, SIGN_CLASSES
from carla_mr.schema import StrictModel


class PreferencesConfig(StrictModel):
    """An AV's preference cache: the signs, background colours and contexts it asks for."""

    signs: list[str] = Field(default_factory=lambda: ["stop", "yield", "speed_limit", "no_entry", "priority_road",
                                                      "parking", "warning", "mandatory_arrow"],
                             description="Sign classes (carla_mr.config.vocab.SIGN_CLASSES).")
    colours: list[str] = Field(default_factory=lambda: ["red", "yellow", "green", "blue", "purple", "white",
                                                        "black", "gray"],
                               description="Background colours (carla_mr.config.vocab.COLOURS).")
    contexts: list[str] = Field(default_factory=list, description="Re-contextualisation phrases ('a snowy road').")

    @field_validator("signs")
    @classmethod
    def _signs(cls, v):
        bad = [s for s in v if s not in SIGN_CLASSES]
        if bad:
            raise ValueError(f"unknown sign classes {bad}; known: {', '.join(SIGN_CLASSES)}")
        return v

    @field_validator("colours")
    @classmethod
    def _colours(cls, v):
        bad = [c for c in v if c not in COLOURS]
        if bad:
            raise ValueError(f"unknown colours {bad}; known: {', '.join(COLOURS)}")
        return v


class SimulatorGenConfig(StrictModel):
    """One traffic simulator's generation settings in the main job (the paper's G_{i,j,k}
    differs by simulator k): its own seed stream, sampler steps, guidance and, optionally,
    its own checkpoint (a model directory or a DreamBooth/LoRA output)."""

    seed_offset: int = Field(0, description="Added to the run's seed for this simulator's seed stream.")
    steps: int | None = Field(None, ge=1, le=1000, description="Sampling steps (None: genai.steps).")
    guidance: float | None = Field(None, ge=0.0, le=30.0, description="Guidance scale (None: genai.guidance).")
    checkpoint: str | None = Field(None, description="Model directory (None: genai.checkpoint).")


def _default_simulators() -> list[SimulatorGenConfig]:
    # different sampler budgets per simulator: the scenario's steps at full guidance, and a
    # faster, coarser one
    return [SimulatorGenConfig(seed_offset=0, guidance=7.5),
            SimulatorGenConfig(seed_offset=1_000_003, steps=8, guidance=3.0)]


class ThetaConfig(StrictModel):
    """theta measured in the main job (docs/genai.md, "theta"): a tiny classifier's error on a
    held-apart validator-art set after ``steps`` class-balanced training steps on a simulator's
    generated images, divided by chance (its error before)."""

    enabled: bool = Field(True, description="Measure theta per simulator in the main job.")
    steps: int = Field(30, ge=1, le=1000, description="Fine-tuning steps of the tiny model per measurement.")
    window: int = Field(64, ge=4, le=4096, description="The simulator's most recent images the tiny model trains on.")
    eval_per_class: int = Field(40, ge=2, le=500, description="Held-apart evaluation crops per class.")


class GenaiConfig(StrictModel):
    enabled: bool = False
    checkpoint: str | None = Field(None, description="Model directory (None: the committed CPU base model).")
    validator: str | None = Field(None, description="Validator directory (None: the committed small CNN).")
    token: str | None = Field(None, description="DreamBooth identifier of a fine-tuned checkpoint ('sks').")
    steps: int = Field(20, ge=1, le=1000, description="Sampling steps.")
    guidance: float = Field(7.5, ge=0.0, le=30.0, description="Classifier-free guidance scale.")
    sampler: Literal["dpm", "ddim"] = "dpm"
    per_prompt: int = Field(1, ge=1, le=64, description="Images per prompt.")
    theta: bool = Field(False, description="Also compute theta (trains small validators; slower).")
    theta_mode: Literal["scratch", "finetune"] = Field("scratch", description="How theta is measured (docs/genai.md).")
    preferences: PreferencesConfig = Field(default_factory=PreferencesConfig)
    # -- the main job's generation worker (carla_mr.genai.stage.GenaiStage) --
    jobs_per_round: int = Field(2, ge=0, le=1000, description="Scheduled windows turned into generation jobs "
                                                             "per market round (CPU budget).")
    signs_per_job: int = Field(2, ge=1, le=64, description="Signs nearest the window's AV generated per job.")
    swap_radius_m: float = Field(120.0, gt=0, description="Only signs within this distance of the AV, metres.")
    swap_only_recognised: bool = Field(True, description="Swap only images the validator recognises.")
    simulators: list[SimulatorGenConfig] = Field(default_factory=_default_simulators,
                                                 description="Per traffic simulator settings (simulator k uses entry "
                                                             "(k-1) mod len).")
    measure_theta: ThetaConfig = Field(default_factory=ThetaConfig)
    worker: bool = Field(True, description="Generate in a worker thread, off the tick loop (results are applied "
                                           "on a later tick).")
    max_backlog: int = Field(2, ge=1, le=1000, description="Worker jobs waiting or running at most; a job that "
                                                           "comes due while the worker is this far behind is "
                                                           "skipped (counted in summary.skipped_jobs), so "
                                                           "generation never holds the run back.")
    use_real_time_lead: bool = Field(True, description="When the worker is max_backlog jobs behind but the run is "
                                                       "ahead of real time, the tick thread waits for the worker "
                                                       "(until wall time reaches 0.85 x simulated time: "
                                                       "stage.LEAD_SHARE) instead of skipping the window, so a run "
                                                       "faster than real time spends its lead on generation and "
                                                       "stays at or under 1x real time.")
    upsample: bool = Field(True, description="Lift each generated image to 128 px with the super-resolution stage "
                                             "before it is scored and swapped onto its sign (the paper's "
                                             "TSDreamBooth: base model, then super-resolution).")
    upsampler: str | None = Field(None, description="Upsampler directory (None: the committed one, which reads "
                                                    "prompts with the committed base model's text encoder).")
    upsample_steps: int = Field(10, ge=1, le=1000, description="DDIM steps of the super-resolution stage.")
    value_candidates: int = Field(4, ge=1, le=64, description="Most samples drawn of a speed-limit prompt that names "
                                                              "a value; the ranker keeps the one that reads as that "
                                                              "value (1: plain sampling; carla_mr.genai.ranker).")
    value_confidence: float = Field(0.9, ge=0.0, le=1.0, description="Stop drawing candidates (in rounds of 4) once "
                                                                     "the ranker reads one as the value with this "
                                                                     "probability (1.0: always value_candidates).")
    ranker: str | None = Field(None, description="Ranker directory for value_candidates > 1 (None: the committed "
                                                 "one, trained on the generator's own templates).")
    theta_value: float | None = Field(None, gt=0, le=1, description="A fixed theta fed to the market "
                                                                   "(None: measured, see measure_theta).")
