"""Runner-facing API of the genai stage (numpy in, numpy out).

    model = load_default_generator()                    # the committed CPU base model
    images = generate(model, ["a stop sign on a blue background"], seed=0)   # (B, 32, 32, 3) uint8
    validator = load_default_validator()
    s = score(validator, images, ["stop"])             # {"G", "mean_confidence", ...}
    market_parameters("runs/genai-generate-...")        # {"G", "theta", ...} for the market
    faces = sign_images(["stop", "yield"], seed=0)     # (B, 32, 32, 3) uint8, for sign textures
    up = load_default_upsampler(text_model=model)      # the committed super-resolution stage
    big = upsample(up, images, prompts, seed=0)        # (B, 128, 128, 3) uint8
    run_from_config(scenario.genai, out_dir, seed)     # the whole job of a scenario section

Every function is deterministic for its seed. torch is imported lazily (extra ``genai``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from carla_mr.errors import InputError
from carla_mr.genai.market_link import market_parameters  # noqa: F401  (re-exported)

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "genai"
DEFAULT_MODEL = DATA_DIR / "base"
DEFAULT_VALIDATOR = DATA_DIR / "validator"
DEFAULT_UPSAMPLER = DATA_DIR / "upsampler"


def default_model_path() -> Path:
    return DEFAULT_MODEL


def default_validator_path() -> Path:
    return DEFAULT_VALIDATOR


def default_upsampler_path() -> Path:
    return DEFAULT_UPSAMPLER


def load_default_upsampler(path: str | os.PathLike | None = None, text_model=None, device: str = "cpu"):
    """The super-resolution stage (32 -> 128 px; the committed one unless ``path`` names another),
    reading prompts with ``text_model``'s text encoder (default: the committed base model's).
    Returns a :class:`~carla_mr.genai.upsampler.Upsampler`."""
    from carla_mr.genai.upsampler import load_upsampler

    return load_upsampler(path or DEFAULT_UPSAMPLER, text_model or load_default_generator(device=device),
                          device=device)


def upsample(upsampler, images: np.ndarray, prompts: Sequence[str], seed: int = 0, *, steps: int = 10,
             guidance: float = 1.0) -> np.ndarray:
    """Lift (N, 32, 32, 3) uint8 images to (N, 128, 128, 3) uint8 with their prompts
    ("a speed limit 30 sign on a red background" draws 30); image i uses seed ``seed + i``."""
    from carla_mr.genai.upsampler import upsample as _upsample

    return _upsample(upsampler, images, prompts, steps=steps, guidance=guidance, seed=seed)


def load_default_generator(path: str | os.PathLike | None = None, device: str = "cpu"):
    """The text-to-image model (the committed base model unless ``path`` names another
    checkpoint directory). Returns a :class:`~carla_mr.genai.model.TextToImage`."""
    from carla_mr.genai.model import load_model

    return load_model(path or DEFAULT_MODEL, device=device)


def generate(model, prompts: Sequence[str], seed: int = 0, *, steps: int = 20, guidance: float = 7.5,
             sampler: str = "dpm", upsampler=None, upsample_steps: int = 10) -> np.ndarray:
    """(B, H, W, 3) uint8 RGB, one image per prompt; image i uses seed ``seed + i``. With
    ``upsampler`` (:func:`load_default_upsampler`) the images are lifted by the super-resolution
    stage with the same prompts (``upsample_steps`` DDIM steps): (B, 128, 128, 3)."""
    from carla_mr.genai.sample import sample

    images = sample(model, list(prompts), seed=seed, steps=steps, guidance=guidance, sampler=sampler)
    if upsampler is not None:
        images = upsample(upsampler, images, prompts, seed=seed, steps=upsample_steps)
    return images


def load_default_validator(path: str | os.PathLike | None = None):
    """The sign classifier (the committed small CNN unless ``path`` names another)."""
    from carla_mr.genai.validator import load_validator

    return load_validator(path or DEFAULT_VALIDATOR)


def score(validator, images: np.ndarray, kinds: Sequence[str]) -> dict:
    """Generative score of images against their prompted classes: {"G", "mean_confidence",
    "n", "predicted", "confidence", "recognised"}."""
    from carla_mr.genai.scores import generative_score

    return generative_score(validator, images, kinds)


def sign_images(kinds: Sequence[str], seed: int = 0, *, colours: Sequence[str] | None = None, model=None,
                steps: int = 20, guidance: float = 7.5, values: Sequence[int | None] | None = None,
                upsampler=None, upsample_steps: int = 10) -> np.ndarray:
    """Generated images of the given sign kinds (background colour per item, default white),
    for swapping onto in-world signs: (B, H, W, 3) uint8. ``values``: the speed value (km/h)
    per item for ``speed_limit`` (None: the generic prompt). With ``upsampler`` (from
    :func:`load_default_upsampler`) the 32 px images are lifted to 128 px with the same prompts."""
    from carla_mr.genai.prompts import prompt_for

    cols = list(colours) if colours is not None else ["white"] * len(kinds)
    vals = list(values) if values is not None else [None] * len(kinds)
    if len(cols) != len(kinds) or len(vals) != len(kinds):
        raise InputError("one colour (and one value, if given) per sign kind is needed", field="colours")
    m = model or load_default_generator()
    prompts = [prompt_for(k, c, value=v if k == "speed_limit" else None) for k, c, v in zip(kinds, cols, vals)]
    return generate(m, prompts, seed, steps=steps, guidance=guidance, upsampler=upsampler,
                    upsample_steps=upsample_steps)


def run_from_config(cfg, out: str | os.PathLike, seed: int = 0, *, model=None, validator=None, progress=None,
                    log=None) -> dict:
    """Run the genai job a scenario's ``genai`` section (:class:`~carla_mr.config.genai.GenaiConfig`)
    describes: preferences -> prompts -> images + manifest + scores in ``out``.

    Returns ``scores.json``'s content plus ``"market"``: {"G", "theta"} when theta was computed
    (``cfg.theta``), else None. ``model``/``validator`` reuse already-loaded ones.
    """
    from carla_mr.genai.generate import generate_run
    from carla_mr.genai.prompts import Preferences, preference_prompts

    p = cfg.preferences
    specs = preference_prompts(Preferences(signs=p.signs, colours=p.colours, contexts=p.contexts, token=cfg.token))
    model_ref = cfg.checkpoint or str(DEFAULT_MODEL)
    m = model or load_default_generator(cfg.checkpoint)
    v = validator or load_default_validator(cfg.validator)
    scores = generate_run(out, specs, model=m, model_ref=model_ref, validator=v,
                          validator_ref=cfg.validator or str(DEFAULT_VALIDATOR), seed=seed, per_prompt=cfg.per_prompt,
                          steps=cfg.steps, guidance=cfg.guidance, sampler=cfg.sampler, theta=cfg.theta,
                          theta_mode=cfg.theta_mode, progress=progress, log=log)
    scores["market"] = market_parameters(out) if cfg.theta else None
    return scores
