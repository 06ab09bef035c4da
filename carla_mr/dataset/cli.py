"""``carla-mr dataset``: record labeled camera datasets; evaluate perception in the loop."""

from __future__ import annotations

from pathlib import Path

import click

from carla_mr.cli_common import common_options, emit, guarded, log, make_run_dir, progress


@click.group(name="dataset")
def dataset_group():
    """Record labeled sensor datasets; evaluate perception in the loop."""


def _load(scenario_path, overrides):
    from carla_mr.config import load_scenario

    return load_scenario(scenario_path, list(overrides))


@dataset_group.command("record")
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a scenario key (repeatable).")
@click.option("--frames", type=click.IntRange(min=1), default=None, help="Record this many ticks (recorder.max_frames).")
@click.option("--every-k", type=click.IntRange(min=1), default=None, help="Record every k-th tick.")
@click.option("--min-box", type=click.IntRange(min=0), default=None, help="Minimum exported box side, pixels.")
@click.option("--swap-share", type=click.FloatRange(0, 1), default=None,
              help="Share of signs shown with generated textures.")
@click.option("--texture-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Folder of generated sign images (<kind>/*.png or <kind>_*.png).")
@click.option("--texture-source", type=click.Choice(["auto", "folder", "genai", "procedural"]), default=None,
              help="Where swapped textures come from (auto: folder, genai model, procedural).")
@click.option("--cameras", type=click.IntRange(min=1, max=64), default=None, help="AVs carrying a camera.")
@click.option("--image-format", type=click.Choice(["png", "jpg"]), default=None)
@click.option("--worlds", type=click.IntRange(min=1), default=None,
              help="Record N shards (worlds), shard i with seed + i, into --out/shard000... plus a merged "
                   "manifest and COCO file (default 1: one plain recording).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS|auto|local",
              help="Run every world on its own Ray actor (local: start a cluster here; auto / HOST:PORT: join one).")
@click.option("--carla-hosts", default=None, metavar="H1:P1,H2:P2",
              help="One CARLA server per world (backend carla); --worlds defaults to their number.")
@common_options
@guarded
def record_cmd(scenario, overrides, frames, every_k, min_box, swap_share, texture_dir, texture_source, cameras,
               image_format, worlds, ray_address, carla_hosts, out, seed, as_json):
    """Record SCENARIO's AV cameras into --out: frames, COCO + YOLO labels, poses, manifest.

    Running the same command on the same --out resumes an interrupted recording. With
    --worlds/--ray/--carla-hosts it records one shard per world (see docs/scale.md).
    """
    from carla_mr.dataset.recorder import record

    sc = _load(scenario, overrides)
    cfg = sc.recorder
    upd = {k: v for k, v in {"max_frames": frames, "every_k": every_k, "min_box_px": min_box,
                             "swap_share": swap_share, "texture_dir": texture_dir,
                             "texture_source": texture_source, "cameras": cameras,
                             "image_format": image_format}.items() if v is not None}
    cfg = cfg.model_validate({**cfg.model_dump(), **upd, "enabled": True})
    sc = sc.model_copy(update={"recorder": cfg})
    run_dir = make_run_dir(out, "dataset-record")
    seed = sc.seed if seed is None else seed
    if worlds is not None or ray_address is not None or carla_hosts is not None:
        _record_sharded(sc, run_dir, cfg, seed, worlds, ray_address, carla_hosts, as_json)
        return
    total = cfg.max_frames if cfg.max_frames is not None else None
    log(f"recording {sc.name} ({sc.map}) into {run_dir}")
    with progress(total, "recording", enabled=not as_json) as advance:
        summary = record(sc, run_dir, seed=seed, cfg=cfg, on_frame=advance)
    emit(summary, as_json=as_json, title="dataset record")


def _record_sharded(sc, run_dir, cfg, seed, worlds, ray_address, carla_hosts, as_json):
    from carla_mr.dataset.shards import record_shards
    from carla_mr.scale import parse_carla_hosts, parse_ray_address

    address = parse_ray_address(ray_address)
    hosts = parse_carla_hosts(carla_hosts)
    n = worlds if worlds is not None else (len(hosts) or 1)
    where = f"on Ray ({address})" if address else "one after another"
    log(f"recording {sc.name} ({sc.map}): {n} world(s) {where}, seeds {seed}..{seed + n - 1} into {run_dir}")
    with progress(n, "worlds", enabled=not as_json) as advance:
        result = record_shards(sc, run_dir, worlds=n, seed=seed, cfg=cfg, address=address, carla_hosts=hosts,
                               on_shard=lambda i, s: advance(1))
    if as_json:
        emit(result, as_json=True)
        return
    rows = [(r["dir"], r["seed"], r["carla"] or "-", r["images"], r["annotations"], r["complete"])
            for r in result["shards"]]
    rows.append(("merged", "-", "-", result["images"], result["annotations"], result["complete"]))
    emit(result, as_json=False, title=f"dataset record: {n} world(s) -> {run_dir}", rows=rows,
         columns=("shard", "seed", "carla", "images", "annotations", "complete"))


@dataset_group.command("eval")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--model", default=None, help="'default', 'template', or module:attr (callable or torch module).")
@click.option("--checkpoint", type=click.Path(exists=True), default=None, help="Weights for --model.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a scenario key (when SOURCE is a scenario).")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="When SOURCE is a scenario: evaluate this many ticks.")
@click.option("--no-plots", is_flag=True, default=False, help="Skip the PNG plots.")
@click.option("--detector", default=None, metavar="MODULE:ATTR",
              help="Also score a detector on full frames (COCOeval): a torchvision-style or Ultralytics model, "
                   "or an object with detect(images).")
@click.option("--detector-checkpoint", type=click.Path(exists=True), default=None, help="Weights for --detector.")
@common_options
@guarded
def eval_cmd(source, model, checkpoint, overrides, frames, no_plots, detector, detector_checkpoint, out, seed,
             as_json):
    """Run a model under test on the visible signs of SOURCE and report its accuracy.

    SOURCE is a recorded dataset folder (carla-mr dataset record) or a scenario file (the
    model runs in the loop on freshly rendered frames). Reports accuracy by texture source,
    distance band and visibility as a table, report.json and plots in --out.
    """
    from carla_mr.dataset.perception import evaluate_dataset, evaluate_scenario, write_report

    run_dir = make_run_dir(out, "dataset-eval")
    if source.is_dir():
        report = evaluate_dataset(source, model=model, checkpoint=checkpoint, detector=detector,
                                  detector_checkpoint=detector_checkpoint)
    else:
        sc = _load(source, overrides)
        report = evaluate_scenario(sc, seed=sc.seed if seed is None else seed, model=model, checkpoint=checkpoint,
                                   ticks=frames, detector=detector, detector_checkpoint=detector_checkpoint)
    detection = report.pop("detection", None)
    paths = write_report(report, run_dir, plots=not no_plots)
    if detection is not None:
        from carla_mr.dataset.detection_eval import detection_summary, write_detection_report

        paths.update(write_detection_report(detection, run_dir))
    rows = [(r["group"], r["bin"], r["n"], r["accuracy"]) for r in report["table"]]
    result = {"run_dir": str(run_dir), "model": report["model"], "n": report["overall"]["n"],
              "accuracy": report["overall"]["accuracy"], "table": report["table"], "files": paths}
    if detection is not None:
        result["detection"] = detection_summary(detection)
        result["detection_table"] = detection["table"]
    if as_json:
        emit(result, as_json=True)
    else:
        emit(result, as_json=False, title=f"perception: {report['model']} (overall "
             f"{report['overall']['accuracy']:.3f} on {report['overall']['n']} crops)",
             rows=rows, columns=("group", "bin", "n", "accuracy"))
        if detection is not None:
            from carla_mr.dataset.detection_eval import detection_rows

            o = detection["overall"]
            emit(result, as_json=False, title=f"detector: {detection['detector']} (mAP {o.get('mAP', float('nan')):.3f}"
                 f", {detection['false_positives_per_image']:.2f} false positives per frame)",
                 rows=detection_rows(detection), columns=("group", "bin", "signs", "mAP", "AP50", "recall@0.5"))


@dataset_group.command("train-default")
@click.option("--frames", type=click.IntRange(min=1), default=75, show_default=True,
              help="Recorded ticks per map and texture source.")
@click.option("--cameras", type=click.IntRange(min=1, max=64), default=6, show_default=True)
@click.option("--signs", type=click.IntRange(min=0), default=400, show_default=True,
              help="Random signs injected into each map (signs.random_count).")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--texture-source", type=click.Choice(["procedural", "auto", "genai"]), default="procedural",
              show_default=True, help="Where the generated textures come from.")
@click.option("--reverse/--no-reverse", default=True, show_default=True,
              help="Also train on generated textures and test on both (the reverse direction; doubles training).")
@click.option("--install", is_flag=True, default=False,
              help="Copy the model trained on original textures to carla_mr/data/perception/crop_net.")
@common_options
@guarded
def train_default_cmd(frames, cameras, signs, epochs, texture_source, reverse, install, out, seed, as_json):
    """Train the default model under test (a crop CNN) on frames with original textures and test it
    on an unseen map with original and with generated textures (and the reverse), beside the
    template baseline. Writes crop_net/, train_log.csv, results.json and results.md to --out."""
    import shutil

    from carla_mr.dataset.crop_net import default_crop_net_path
    from carla_mr.dataset.train_default import results_markdown, run

    run_dir = make_run_dir(out, "dataset-train-default")
    results = run(run_dir, seed=0 if seed is None else seed, frames=frames, cameras=cameras, signs=signs,
                  epochs=epochs, texture_source=texture_source, reverse=reverse, progress=log)
    results["run_dir"] = str(run_dir)
    if install:
        dst = default_crop_net_path()
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("crop_net.json", "model.safetensors"):
            shutil.copyfile(run_dir / "crop_net" / name, dst / name)
        results["installed"] = str(dst)
    if as_json:
        emit(results, as_json=True)
    else:
        click.echo(results_markdown(results))
