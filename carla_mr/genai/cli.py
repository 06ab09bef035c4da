"""``carla-mr genai``: sign data, base model, DreamBooth, generation, validator and scores."""

from __future__ import annotations

from pathlib import Path

import click

from carla_mr.cli_common import common_options, emit, guarded, log, make_run_dir, progress


def accel_options(f):
    """--device, --dtype, --gradient-checkpointing, --use-8bit-adam (see carla_mr.genai.accel)."""
    f = click.option("--use-8bit-adam", is_flag=True, help="bitsandbytes AdamW8bit (needs bitsandbytes).")(f)
    f = click.option("--gradient-checkpointing", is_flag=True, help="Recompute UNet activations (less memory).")(f)
    f = click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
                     help="Mixed precision of the forward passes (weights and optimiser stay fp32).")(f)
    f = click.option("--device", type=str, default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")(f)
    return f


@click.group(name="genai")
def genai_group():
    """TSDreamBooth: sign data, the CPU base model, DreamBooth, generation, validator, scores."""


@genai_group.command("train-base")
@common_options
@click.option("--steps", type=int, default=2000, show_default=True, help="Training steps.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=8e-4, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--image-size", type=int, default=32, show_default=True, help="Image side in pixels.")
@click.option("--ema-decay", type=float, default=0.995, show_default=True, help="EMA decay of the saved weights.")
@click.option("--save-every", type=int, default=100, show_default=True, help="Checkpoint every N steps.")
@click.option("--threads", type=int, default=2, show_default=True, help="torch CPU threads.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.pt.")
@click.option("--warmup", type=int, default=200, show_default=True, help="Linear learning-rate warm-up steps.")
@click.option("--init", "init", type=str, default=None,
              help="Continue training this checkpoint directory (e.g. the committed base) instead of a fresh model.")
@click.option("--value-prompts", is_flag=True,
              help="Prompt speed-limit images with their value ('a speed limit 30 sign on a red background').")
@click.option("--speed-share", type=float, default=0.0, show_default=True,
              help="Fraction of each batch that is speed-limit signs (0: uniform over the classes).")
@click.option("--freeze-text-encoder", is_flag=True,
              help="Train the UNet only (keeps an upsampler that shares the text encoder valid).")
@click.option("--train-tokens", type=str, default="", show_default=True,
              help="With --freeze-text-encoder: these whitespace-separated tokens' input embeddings still train "
                   "(e.g. '0 1 2 3 4 5 6 7 8 9', the digits of speed values).")
@click.option("--cross-attention-levels", type=int, default=0, show_default=True,
              help="Cross-attention in this many lowest-resolution UNet levels (widens an --init model; "
                   "0 keeps its architecture).")
@click.option("--token-lr", type=float, default=5e-3, show_default=True,
              help="Peak learning rate of the --train-tokens embeddings.")
@accel_options
@guarded
def train_base_cmd(out, seed, as_json, steps, batch_size, lr, image_size, ema_decay, save_every, threads, resume, warmup,
                   init, value_prompts, speed_share, freeze_text_encoder, train_tokens, cross_attention_levels, token_lr,
                   device, dtype, gradient_checkpointing, use_8bit_adam):
    """Train the pixel-space text-to-image base model from scratch on procedural signs."""
    from carla_mr.genai.accel import make_accel
    from carla_mr.genai.train import BaseTrainConfig, train_base

    make_accel(device, dtype, gradient_checkpointing, use_8bit_adam)  # bad options fail before the run dir
    if init:
        from carla_mr.genai.model import check_model_dir

        check_model_dir(init, field="--init")
    run = make_run_dir(out, "genai-train-base")
    cfg = BaseTrainConfig(steps=steps, batch_size=batch_size, lr=lr, image_size=image_size, save_every=save_every,
                          ema_decay=ema_decay, warmup=warmup, init=init, value_prompts=value_prompts,
                          speed_share=speed_share, train_text_encoder=not freeze_text_encoder, train_tokens=train_tokens,
                          token_lr=token_lr, cross_attention_levels=cross_attention_levels, device=device, dtype=dtype,
                          gradient_checkpointing=gradient_checkpointing, use_8bit_adam=use_8bit_adam,
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


@genai_group.command("train-upsampler")
@common_options
@click.option("--base", "base", type=str, default=None,
              help="Base checkpoint whose text encoder the upsampler reads prompts with (default: the committed one).")
@click.option("--steps", type=int, default=2000, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--warmup", type=int, default=100, show_default=True)
@click.option("--bank", type=int, default=3000, show_default=True, help="Rendered low/high-resolution pairs.")
@click.option("--speed-share", type=float, default=0.3, show_default=True,
              help="Share of speed-limit signs among the pairs.")
@click.option("--value-swap", type=float, default=0.0, show_default=True,
              help="Share of speed-limit pairs whose 32 px input shows other digits than the prompt and target "
                   "(teaches drawing the prompted value over garbled input digits).")
@click.option("--init", "init", type=str, default=None,
              help="Continue an upsampler directory ('default': the committed one) instead of a fresh UNet.")
@click.option("--save-every", type=int, default=200, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@accel_options
@guarded
def train_upsampler_cmd(out, seed, as_json, base, steps, batch_size, lr, warmup, bank, speed_share, value_swap, init,
                        save_every, threads, device, dtype, gradient_checkpointing, use_8bit_adam):
    """Train the super-resolution stage (32 -> 128 px) on procedural low/high-resolution pairs."""
    from carla_mr.genai.accel import make_accel
    from carla_mr.genai.api import default_model_path, default_upsampler_path
    from carla_mr.genai.model import check_model_dir
    from carla_mr.genai.upsampler import check_upsampler_dir
    from carla_mr.genai.upsampler_train import UpsamplerTrainConfig, train_upsampler

    make_accel(device, dtype, gradient_checkpointing, use_8bit_adam)
    base = base or str(default_model_path())
    check_model_dir(base, field="--base")
    if init == "default":
        init = str(default_upsampler_path())
    if init:
        check_upsampler_dir(init, field="--init")
    cfg = UpsamplerTrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, bank=bank,
                               speed_share=speed_share, value_swap=value_swap, init=init, save_every=save_every,
                               threads=threads, device=device, dtype=dtype,
                               gradient_checkpointing=gradient_checkpointing, use_8bit_adam=use_8bit_adam,
                               seed=0 if seed is None else seed)  # checks the shares before a run dir exists
    run = make_run_dir(out, "genai-train-upsampler")
    with progress(steps, "train-upsampler") as adv:
        res = train_upsampler(run, base, cfg, progress=adv, log=log)
    emit(res, as_json=as_json, title="genai train-upsampler")


@genai_group.command("make-data")
@common_options
@click.option("--per-class", type=int, default=600, show_default=True, help="Training images per class.")
@click.option("--test-per-class", type=int, default=200, show_default=True, help="Held-apart test images per class.")
@click.option("--size", type=int, default=48, show_default=True, help="Typical image side in pixels.")
@guarded
def make_data_cmd(out, seed, as_json, per_class, test_per_class, size):
    """Write a procedural sign data set in the BelgiumTS layout (Training/ + Testing/)."""
    from carla_mr.genai.procedural import write_dataset
    from carla_mr.genai.signs import SIGN_CLASSES

    run = make_run_dir(out, "genai-make-data")
    with progress((per_class + test_per_class) * len(SIGN_CLASSES), "make-data") as adv:
        res = write_dataset(run, per_class=per_class, test_per_class=test_per_class, size=size,
                            seed=0 if seed is None else seed, progress=adv)
    emit(res, as_json=as_json, title="genai make-data")


@genai_group.command("train-validator")
@common_options
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="BelgiumTS/GTSRB-layout directory of real signs (default: the independent open-set set of "
                   "carla_mr.genai.validator_art: value classes + reject).")
@click.option("--arch", type=click.Choice(["small", "googlenet"]), default="small", show_default=True)
@click.option("--width", type=float, default=None, help="Channel width (small: base channels; googlenet: multiplier).")
@click.option("--epochs", type=int, default=None, help="Default: 10 (independent set), 15 (--data).")
@click.option("--per-class", type=int, default=None, help="Training crops per class (default 400; 600 procedural).")
@click.option("--test-per-class", type=int, default=None, help="Held-apart crops per class (default 100; 200).")
@click.option("--threads", type=int, default=2, show_default=True)
@guarded
def train_validator_cmd(out, seed, as_json, data, arch, width, epochs, per_class, test_per_class, threads):
    """Train the validator (sign classifier) from scratch and report its held-apart accuracy."""
    from carla_mr.genai.train_validator import train_art_validator, train_validator

    run = make_run_dir(out, "genai-train-validator")
    if data is None and arch == "small":
        res = train_art_validator(run, per_class=per_class or 400, test_per_class=test_per_class or 100,
                                  epochs=epochs or 10, width=int(width or 24), seed=0 if seed is None else seed,
                                  threads=threads, log=log)
    else:
        res = train_validator(run, data=data, arch=arch, width=width, epochs=epochs or 15, per_class=per_class or 600,
                              test_per_class=test_per_class or 200, seed=0 if seed is None else seed,
                              threads=threads, log=log)
    emit(res, as_json=as_json, title="genai train-validator")


@genai_group.command("train-ranker")
@common_options
@click.option("--per-class", type=click.IntRange(1, 100_000), default=800, show_default=True,
              help="Template images per class.")
@click.option("--test-per-class", type=click.IntRange(1, 100_000), default=60, show_default=True,
              help="Held-apart template images per class (another seed).")
@click.option("--epochs", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--width", type=click.IntRange(4, 256), default=32, show_default=True, help="Base channels of the CNN.")
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True)
@guarded
def train_ranker_cmd(out, seed, as_json, per_class, test_per_class, epochs, width, threads):
    """Train the best-of-k ranker (reads speed values) on the generator's own templates."""
    import torch

    from carla_mr.genai.ranker import RANKER_CLASSES, train_ranker

    run = make_run_dir(out, "genai-train-ranker")
    torch.set_num_threads(threads)
    with progress(epochs * -(-per_class * len(RANKER_CLASSES) // 64), "ranker") as advance:
        res = train_ranker(run, per_class=per_class, test_per_class=test_per_class, epochs=epochs, width=width,
                           seed=1 if seed is None else seed, progress=advance, log=log)
    emit({**res, "out": str(run)}, as_json=as_json, title="genai train-ranker")


@genai_group.command("dreambooth")
@common_options
@click.option("--base", "base", type=str, default=None, help="Base checkpoint directory (default: the committed model).")
@click.option("--instance-dir", type=click.Path(path_type=Path), required=True, help="Folder of images of one sign.")
@click.option("--class", "kind", type=str, required=True, help="The sign class of the instance images (e.g. stop).")
@click.option("--token", type=str, default="sks", show_default=True, help="Rare identifier token.")
@click.option("--instance-prompt", type=str, default=None, help="Default: 'a {token} {sign} sign on a {colour} background'.")
@click.option("--class-prompt", type=str, default=None, help="Default: 'a {sign} sign on a {colour} background'.")
@click.option("--steps", type=int, default=400, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True, help="Instance images per step (+ as many class images).")
@click.option("--lr", type=float, default=None,
              help="Default: 5e-6 full latent (SD), 1e-5 full pixel model, 1e-4 LoRA.")
@click.option("--prior-loss-weight", type=float, default=1.0, show_default=True)
@click.option("--num-class-images", type=int, default=100, show_default=True)
@click.option("--prior-classes", type=click.Choice(["instance", "all"]), default="instance", show_default=True,
              help="Class images of the instance's class only (the paper), or of every class the base knows "
                   "(keeps the classes a full fine-tune does not train).")
@click.option("--class-guidance", type=float, default=None,
              help="Classifier-free guidance of the class images. Default: 1.0 for pixel-space models (samples "
                   "the model's own prior; guided samples make a full fine-tune drift), 7.5 for latent (SD).")
@click.option("--mode", type=click.Choice(["full", "lora"]), default="full", show_default=True)
@click.option("--rank", type=int, default=4, show_default=True, help="LoRA rank.")
@click.option("--train-text-encoder", is_flag=True)
@click.option("--shift-px", type=int, default=2, show_default=True,
              help="Augmentation: random shift of the instance images, pixels (0: off).")
@click.option("--upsampler", "upsampler", type=str, default=None,
              help="Also fine-tune this super-resolution stage on the instance images' low/high pairs "
                   "('default': the committed one).")
@click.option("--upsampler-steps", type=int, default=200, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@accel_options
@guarded
def dreambooth_cmd(out, seed, as_json, base, instance_dir, kind, token, instance_prompt, class_prompt, steps, batch_size,
                   lr, prior_loss_weight, num_class_images, prior_classes, class_guidance, mode, rank,
                   train_text_encoder, shift_px, upsampler,
                   upsampler_steps, threads, device, dtype, gradient_checkpointing, use_8bit_adam):
    """DreamBooth with prior preservation: teach the model one sign under a rare token."""
    from carla_mr.genai.accel import make_accel
    from carla_mr.genai.api import default_model_path, default_upsampler_path
    from carla_mr.genai.dreambooth import DreamBoothConfig, dreambooth, read_instance_images
    from carla_mr.genai.model import check_model_dir
    from carla_mr.genai.signs import sign_class_id

    # every input is checked before the run directory is made
    sign_class_id(kind)
    read_instance_images(instance_dir)  # no images, unreadable or mixed sizes
    base = base or str(default_model_path())
    check_model_dir(base, field="--base")
    make_accel(device, dtype, gradient_checkpointing, use_8bit_adam)
    if upsampler == "default":
        upsampler = str(default_upsampler_path())
    if upsampler:
        from carla_mr.genai.upsampler import check_upsampler_dir

        check_upsampler_dir(upsampler)
    run = make_run_dir(out, "genai-dreambooth")
    cfg = DreamBoothConfig(kind=kind, token=token, instance_prompt=instance_prompt, class_prompt=class_prompt,
                           steps=steps, batch_size=batch_size, lr=lr, prior_loss_weight=prior_loss_weight,
                           num_class_images=num_class_images, prior_classes=prior_classes,
                           class_guidance=class_guidance, mode=mode, rank=rank,
                           train_text_encoder=train_text_encoder, shift_px=shift_px, upsampler=upsampler,
                           upsampler_steps=upsampler_steps, device=device, dtype=dtype,
                           gradient_checkpointing=gradient_checkpointing, use_8bit_adam=use_8bit_adam,
                           seed=0 if seed is None else seed, threads=threads)
    with progress(steps, "dreambooth") as adv:
        res = dreambooth(base, instance_dir, run, cfg, progress=adv, log=log)
    emit(res, as_json=as_json, title="genai dreambooth")


@genai_group.command("generate")
@common_options
@click.option("--checkpoint", type=str, default=None, help="Model directory (default: the committed base model).")
@click.option("--validator", "validator_path", type=str, default=None,
              help="Validator directory (default: the committed small CNN).")
@click.option("--no-validator", is_flag=True, help="Skip the validator verdicts and G.")
@click.option("--prompt", "prompts", multiple=True, help="A prompt (repeatable); default: from the preferences.")
@click.option("--signs", type=str, default=None, help="Preferences: comma-separated sign classes (default all).")
@click.option("--colours", type=str, default=None, help="Preferences: comma-separated background colours (default all).")
@click.option("--contexts", type=str, default=None, help="Preferences: ';'-separated contexts ('a snowy road;a city street').")
@click.option("--token", type=str, default=None, help="DreamBooth identifier to put in the prompts.")
@click.option("--per-prompt", type=int, default=1, show_default=True)
@click.option("--steps", type=int, default=20, show_default=True)
@click.option("--guidance", type=float, default=7.5, show_default=True, help="Classifier-free guidance scale.")
@click.option("--sampler", type=click.Choice(["dpm", "ddim"]), default="dpm", show_default=True)
@click.option("--theta", is_flag=True, help="Also compute theta and the Frechet distance (slower).")
@click.option("--theta-mode", type=click.Choice(["scratch", "finetune"]), default="scratch", show_default=True,
              help="scratch: train-on-synthetic vs train-on-real accuracy; finetune: accuracy after/before "
                   "fine-tuning the validator on the synthetic images.")
@click.option("--threads", type=int, default=2, show_default=True)
@guarded
def generate_cmd(out, seed, as_json, checkpoint, validator_path, no_validator, prompts, signs, colours, contexts, token,
                 per_prompt, steps, guidance, sampler, theta, theta_mode, threads):
    """Generate sign images for prompts or preferences; write images, manifest and scores."""
    from carla_mr.errors import InputError, require
    from carla_mr.genai.api import default_model_path, default_validator_path
    from carla_mr.genai.generate import generate_run, specs_from_prompts
    from carla_mr.genai.model import load_model
    from carla_mr.genai.prompts import Preferences, preference_prompts

    torch = require("torch", extra="genai", feature="generation")
    torch.set_num_threads(int(threads))
    if prompts:
        specs = specs_from_prompts(prompts)
    else:
        kw = {}
        if signs:
            kw["signs"] = [s.strip() for s in signs.split(",") if s.strip()]
        if colours:
            kw["colours"] = [s.strip() for s in colours.split(",") if s.strip()]
        if contexts:
            kw["contexts"] = [s.strip() for s in contexts.split(";") if s.strip()]
        specs = preference_prompts(Preferences(token=token, **kw))
    if theta and no_validator:
        raise InputError("--theta needs the validator; drop --no-validator", field="--theta")
    ckpt = checkpoint or str(default_model_path())
    model = load_model(ckpt)
    validator = None
    vref = None
    if not no_validator:
        from carla_mr.genai.validator import load_validator

        vref = validator_path or str(default_validator_path())
        validator = load_validator(vref)
    run = make_run_dir(out, "genai-generate")
    n = len(specs) * per_prompt
    with progress(n, "generate") as adv:
        res = generate_run(run, specs, model=model, model_ref=ckpt, validator=validator, validator_ref=vref,
                           seed=0 if seed is None else seed, per_prompt=per_prompt, steps=steps, guidance=guidance,
                           sampler=sampler, theta=theta, theta_mode=theta_mode, progress=lambda k: adv(k) if k else None, log=log)
    res = {"run": str(run), **res}
    emit({k: v for k, v in res.items() if k not in ("theta_detail",)}, as_json=as_json, title="genai generate")


@genai_group.command("evaluate")
@common_options
@click.option("--checkpoint", type=str, default=None, help="Model directory (default: the committed base model).")
@click.option("--validator", "validator_path", type=str, default=None,
              help="Validator directory (default: the committed independent one).")
@click.option("--upsampler", type=str, default=None,
              help="Super-resolution stage applied before scoring: 'default' (the committed one) or a directory.")
@click.option("--values", is_flag=True, help="Score speed-value legibility instead of G over the class x colour grid.")
@click.option("--per-prompt", type=int, default=2, show_default=True,
              help="Images per class x colour prompt (with --values: per speed value).")
@click.option("--steps", type=int, default=20, show_default=True)
@click.option("--guidance", type=float, default=7.5, show_default=True)
@click.option("--value-candidates", type=click.IntRange(1, 64), default=1, show_default=True,
              help="With --values: samples per prompt, the ranker keeps one (the run also reads candidate 0 "
                   "alone).")
@click.option("--value-confidence", type=click.FloatRange(0.0, 1.0), default=None,
              help="Stop drawing a prompt's candidates once the ranker reads one as the value with this "
                   "probability (default: always --value-candidates).")
@click.option("--ranker", "ranker_path", type=str, default=None,
              help="Ranker directory for --value-candidates > 1 (default: the committed one).")
@click.option("--threads", type=int, default=2, show_default=True)
@guarded
def evaluate_cmd(out, seed, as_json, checkpoint, validator_path, upsampler, values, per_prompt, steps, guidance,
                 value_candidates, value_confidence, ranker_path, threads):
    """Score a generator with the independent validator: G with its interval per class and
    colour, theta, diversity; or (--values) whether prompted speed values are legible."""
    import json

    from carla_mr.errors import InputError, require
    from carla_mr.genai.api import load_default_generator, load_default_upsampler, load_default_validator
    from carla_mr.genai.evaluate import evaluate_generator, speed_value_accuracy

    torch = require("torch", extra="genai", feature="evaluation")
    torch.set_num_threads(int(threads))
    if per_prompt < 1:
        raise InputError(f"--per-prompt must be >= 1, got {per_prompt}", field="--per-prompt")
    model = load_default_generator(checkpoint)
    validator = load_default_validator(validator_path)
    up = load_default_upsampler(None if upsampler == "default" else upsampler, text_model=model) if upsampler else None
    ranker = None
    if values and value_candidates > 1:
        from carla_mr.genai.ranker import load_ranker

        ranker = load_ranker(ranker_path)
    run = make_run_dir(out, "genai-evaluate")
    seed = 0 if seed is None else int(seed)
    log(f"evaluating {'speed values' if values else 'the class x colour grid'} ({steps} steps, guidance {guidance})")
    if values:
        res = speed_value_accuracy(model, validator, upsampler=up, per_value=per_prompt, steps=steps,
                                   guidance=guidance, seed=seed, value_candidates=value_candidates,
                                   value_confidence=value_confidence, ranker=ranker,
                                   grid_path=run / "values_grid.png")
    else:
        res = evaluate_generator(model, validator, per_prompt=per_prompt, steps=steps, guidance=guidance, seed=seed,
                                 upsampler=up)
    res = {"run": str(run), "checkpoint": checkpoint or "default", "upsampler": upsampler, **res}
    (run / "evaluate.json").write_text(json.dumps(res, indent=1, default=str))
    emit(res, as_json=as_json, title="genai evaluate")


@genai_group.command("market-params")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True, help="A genai generate run directory.")
@click.option("--subset", type=click.Choice(["all", "background", "context"]), default="all", show_default=True)
@click.option("--json", "as_json", is_flag=True, default=False, help="Print JSON on stdout.")
@guarded
def market_params_cmd(run_dir, subset, as_json):
    """Print G and theta of a generate run, as the market's parameters."""
    from carla_mr.genai.market_link import market_parameters

    emit(market_parameters(run_dir, subset), as_json=as_json, title="genai market-params")
