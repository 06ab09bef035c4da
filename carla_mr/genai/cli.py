"""``carla-mr genai``: sign data, base model, DreamBooth, generation, validator and scores."""

from __future__ import annotations

from pathlib import Path

import click

from carla_mr.cli_common import common_options, emit, guarded, log, make_run_dir, progress


@click.group(name="genai")
def genai_group():
    """TSDreamBooth: sign data, the CPU base model, DreamBooth, generation, validator, scores."""


@genai_group.command("train-base")
@common_options
@click.option("--steps", type=int, default=4000, show_default=True, help="Training steps.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--image-size", type=int, default=32, show_default=True, help="Image side in pixels.")
@click.option("--save-every", type=int, default=250, show_default=True, help="Checkpoint every N steps.")
@click.option("--threads", type=int, default=2, show_default=True, help="torch CPU threads.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.pt.")
@guarded
def train_base_cmd(out, seed, as_json, steps, batch_size, lr, image_size, save_every, threads, resume):
    """Train the pixel-space text-to-image base model from scratch on procedural signs."""
    from carla_mr.genai.train import BaseTrainConfig, train_base

    run = make_run_dir(out, "genai-train-base")
    cfg = BaseTrainConfig(steps=steps, batch_size=batch_size, lr=lr, image_size=image_size, save_every=save_every,
                          seed=0 if seed is None else seed, threads=threads)
    log(f"training the base model into {run}")
    with progress(steps, "train-base") as adv:
        if resume:
            import json

            done = 0
            tj = run / "checkpoint.pt"
            if tj.is_file() and (run / "model" / "carla_mr.json").is_file():
                done = int(json.loads((run / "model" / "carla_mr.json").read_text()).get("trained_steps", 0))
            adv(min(done, steps))
        res = train_base(run, cfg, resume=resume, progress=adv, log=log)
    emit(res, as_json=as_json, title="genai train-base")
