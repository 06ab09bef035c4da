"""``carla-mr twin``: train and evaluate trajectory predictors.

- ``carla-mr twin train DATA... --out DIR``: read each source once, resample it at every rate
  of ``--rates`` (never above its own rate), hold apart a share of the VEHICLES (the same
  vehicles at every rate), train the residual predictor (constant velocity + a bounded learned
  correction) on the rest, and score it and both baselines per (source, rate) on the held-apart
  vehicles -- and on ``--test-data`` (e.g. a map not trained on) -- with per-vehicle bootstrap
  95 % intervals. Writes ``DIR/model/`` (config.json + weights.npz), ``DIR/metrics.json``.
- ``carla-mr twin eval MODEL DATA...`` (or ``--test-data``): the same scores of a saved model
  (or a baseline name) on every source at its own rate. Refuses (exit 2) data that contains
  vehicles the model was trained on, unless ``--allow-train-overlap``.
"""

from __future__ import annotations

import click

from carla_mr.cli_common import common_options, emit, guarded, log, make_run_dir
from carla_mr.config.twin import DEFAULT_FUTURE, DEFAULT_PAST
from carla_mr.errors import InputError
from carla_mr.io import atomic_write_json

COLUMNS = ("source", "Hz", "predictor", "windows", "vehicles", "ADE m [95% CI]", "FDE m [95% CI]",
           "ADE gain vs CV [95% CI]", "R2 disp")


def _data_options(f):
    opts = [
        click.option("--sample-hz", type=float, default=None,
                     help="Resample every source to this rate, Hz (default: each source's own rate)."),
        click.option("--allow-upsample", is_flag=True, help="Allow a rate above the data's own (said in the result)."),
        click.option("--sort-time", is_flag=True, help="Sort rows whose time goes backwards (counted) instead of "
                                                       "refusing the data."),
        click.option("--role", type=click.Choice(["all", "av", "background"]), default="all", show_default=True,
                     help="Which vehicles of a run to use (needs a 'role' column)."),
        click.option("--id-col", default=None, help="Vehicle id column (default: id/track_id/vehicle_id/...)."),
        click.option("--time-col", default=None, help="Time column, seconds or ISO-8601 (default: t/time/timestamp)."),
        click.option("--x-col", default=None, help="x column, metres."),
        click.option("--y-col", default=None, help="y column, metres."),
        click.option("--lon-col", default=None, help="Longitude column, degrees (projected to metres)."),
        click.option("--lat-col", default=None, help="Latitude column, degrees."),
        click.option("--time-unit", type=click.Choice(["s", "ms", "us", "ns"]), default="s", show_default=True,
                     help="Unit of a numeric time column."),
        click.option("--max-gap-s", type=float, default=None,
                     help="Split a track where samples are further apart (default max(1 s, 2.5 sample periods))."),
        click.option("--test-data", "test_data", multiple=True, metavar="PATH",
                     help="Separate test data (repeatable): scored at its own rate."),
        click.option("--map", "maps", multiple=True, metavar="PATH.xodr",
                     help="The OpenDRIVE map the tracks are on (CARLA frame), for a model's map inputs: once "
                          "for every source, or once per source in order (DATA, then --test-data), 'none' for "
                          "a source without a map. Without it a map-aware model serves map-less (by its fallback)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _read(paths, kw: dict) -> list[tuple]:
    from carla_mr.twin import data

    cols = {k: kw[f"{k}_col"] for k in ("id", "time", "x", "y", "lon", "lat")}
    return [data.read_rows(p, columns=cols, time_unit=kw["time_unit"], role=kw["role"]) for p in paths]


def _maps(kw: dict, n_data: int, n_test: int) -> tuple[list, list]:
    """``--map`` -> (MapFeatures or None per DATA source, per --test-data source); exit 2 on a bad map."""
    from carla_mr.twin import map_features

    given = list(kw.get("maps") or ())
    n = n_data + n_test
    if not given:
        return [None] * n_data, [None] * n_test
    if len(given) != 1 and len(given) != n:
        raise InputError(f"give --map once (every source) or once per source ({n}: DATA then --test-data, "
                         f"'none' for a source without a map), got {len(given)}", field="--map")
    loaded: dict[str, object] = {}
    out = []
    for g in (given * n if len(given) == 1 else given):
        if g.lower() == "none":
            out.append(None)
            continue
        if g not in loaded:
            loaded[g] = map_features.load(g).warm()
            log(f"map {g}: {loaded[g].describe()['table_points']} lane points")
        out.append(loaded[g])
    return out[:n_data], out[n_data:]


def _load_opts(kw: dict) -> dict:
    return {"allow_upsample": kw["allow_upsample"], "sort_time": kw["sort_time"], "max_gap_s": kw["max_gap_s"]}


def _fmt_ci(v, ci, pct=False):
    if v is None:
        return ""
    if pct:
        return f"{100 * v:+.1f}% [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _rows(results: list[dict]) -> list[tuple]:
    rows = []
    for r in results:
        for name, m in r["metrics"].items():
            rows.append((r["source"].split("/")[-1], f"{r['hz']:g}", name, m["windows"], m["vehicles"],
                         _fmt_ci(m["ade"], m["ade_ci"]), _fmt_ci(m["fde"], m["fde_ci"]),
                         _fmt_ci(m.get("ade_gain"), m.get("ade_gain_ci"), True), f"{m['r2_disp']:.3f}"))
    return rows


def _no_map(model):
    """The same model served without a map, as tracks with no map get it (its fallback, else zero map inputs)."""
    import copy

    m = copy.copy(model)
    m.map, m.no_map = None, True
    return m


def _score_all(model, tests, past: int, future: int, seed: int, reference=None) -> list[dict]:
    """Every test set scored by the model, both baselines, and (a map-aware model on a source with a
    map) the same model without its map inputs (``residual_no_map``), and ``reference`` (``--compare``)."""
    from carla_mr.twin.experiment import score
    from carla_mr.twin.predictors import ConstantVelocity, ZeroMotion

    out = []
    for ts in tests:
        preds = {"constant_velocity": ConstantVelocity(past, future, ts.hz), "zero_motion": ZeroMotion(past, future,
                                                                                                      ts.hz)}
        if model.kind not in preds:
            extra = {}
            if getattr(model, "map_inputs", False) and ts.map is not None:
                extra[f"{model.kind}_no_map"] = _no_map(model)
            if reference is not None:
                extra["reference"] = reference
            preds = {model.kind: model, **extra, **preds}
        out.append({"source": ts.source, "hz": ts.hz, "windows_available": ts.available, "skipped": ts.report,
                    "metrics": score(preds, ts, seed=seed)})
    return out


def _test_sets(sources, past: int, future: int, *, hz, load: dict, max_windows: int, seed: int, model_keys=None,
               allow_overlap: bool = True, maps=None):
    from carla_mr.twin.experiment import TestSet, window_keys
    from carla_mr.twin.data import tracks_from_rows

    tests, overlap = [], 0
    maps = list(maps) if maps is not None else [None] * len(sources)
    for rows, cmap in zip(sources, maps):
        tr = tracks_from_rows(rows, sample_hz=hz, min_samples=past + future, **load)
        rep = tr.report
        log(f"{rows[4]['source']}: {tr.n_tracks} tracks at {tr.hz:g} Hz (own rate {rep['native_hz']:g} Hz"
            f"{', UPSAMPLED' if rep['upsampled'] else ''}); skipped/repaired: "
            + ", ".join(f"{k}={v}" for k, v in rep.items() if k.endswith(("rows", "tracks", "splits", "segments"))))
        if model_keys:
            n = int(len(set(tr.keys.tolist()) & model_keys))
            if n and not allow_overlap:
                raise InputError(f"{n} of its vehicles were in the model's training data; scoring a model on what "
                                 f"it learned is no result: give other data, or pass --allow-train-overlap",
                                 field="DATA", source=rows[4]["source"])
            overlap += n
        p, f, k, n_all = window_keys(tr, past, future, max_windows=max_windows, seed=seed)
        if len(p):
            tests.append(TestSet(rows[4]["source"], tr.hz, p, f, k, n_all, dict(rep), cmap))
    return tests, overlap


def _init_weights(init_model, past: int, future: int, map_inputs: bool) -> dict:
    """--init: the {params, norm} of a trained map-free residual model, for a map-aware one."""
    from carla_mr.twin.predictors import load_predictor
    from carla_mr.twin.residual import ResidualPredictor

    im = load_predictor(init_model, past=past, future=future)
    if im.kind != ResidualPredictor.kind or getattr(im, "map_inputs", False) or im.params is None:
        raise InputError("--init needs a trained map-free residual model", field="--init", source=str(init_model))
    if not map_inputs:
        raise InputError("--init is for a map-aware model: give --map too", field="--init")
    return {"params": im.params, "norm": im.norm}


def _overlap(reference, tests) -> int:
    """How many held-apart vehicles the --compare model saw in training (its ``train_keys``)."""
    rk = set(getattr(reference, "train_keys", []) or [])
    return int(len({k for t in tests for k in t.keys.tolist()} & rk))


@click.group(name="twin")
def twin_group():
    """Digital-twin trajectory predictors: train, eval."""


@twin_group.command(name="train")
@click.argument("data_paths", nargs=-1, required=True, metavar="DATA...")
@click.option("--past", type=click.IntRange(2, 10000), default=DEFAULT_PAST, show_default=True,
              help="Past steps P (at each rate) of the test windows.")
@click.option("--future", type=click.IntRange(1, 1000), default=DEFAULT_FUTURE, show_default=True,
              help="Predicted steps F.")
@click.option("--rates", default="1,2,5,10,25", show_default=True, help="Rates to train and test at, Hz (comma "
                                                                        "list; overridden by --sample-hz).")
@click.option("--epochs", type=click.IntRange(1), default=40, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=512, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--hidden", type=click.IntRange(1), default=64, show_default=True, help="MLP hidden units.")
@click.option("--layers", type=click.IntRange(1), default=2, show_default=True, help="MLP hidden layers.")
@click.option("--patience", type=click.IntRange(1), default=5, show_default=True)
@click.option("--max-seconds", type=float, default=900.0, show_default=True, help="Stop training after this.")
@click.option("--noise-m", type=float, default=0.2, show_default=True,
              help="Position noise (m, up to) added to half the training windows at <= 5 Hz.")
@click.option("--test-fraction", type=float, default=0.2, show_default=True, help="Share of vehicles held apart.")
@click.option("--max-windows", type=click.IntRange(1), default=20_000, show_default=True,
              help="Training windows per (source, rate), a random subset.")
@click.option("--max-test-windows", type=click.IntRange(1), default=20_000, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch threads.")
@click.option("--map-dropout", type=click.FloatRange(0.0, 1.0), default=0.3, show_default=True,
              help="With --map: share of training windows whose map inputs are zeroed (flag 0), so the model also "
                   "serves tracks with no map.")
@click.option("--init", "init_model", default=None, metavar="MODEL",
              help="With --map: start from this map-free residual model (same --hidden/--layers; map weights 0) "
                   "and keep it inside the new model as the fallback that serves tracks with no map, unchanged.")
@click.option("--rate-balance", is_flag=True, help="Weight each window's loss by 1 / constant velocity's ADE on its "
                                                   "(source, rate), so every rate counts alike.")
@click.option("--compare", "compare", default=None, metavar="MODEL",
              help="Also score this saved model (e.g. the committed default) on the same held-apart windows, "
                   "as 'reference'.")
@_data_options
@common_options
@guarded
def train_cmd(data_paths, past, future, rates, epochs, batch_size, lr, hidden, layers, patience, max_seconds,
              noise_m, test_fraction, max_windows, max_test_windows, threads, map_dropout, init_model, rate_balance,
              compare, out, seed, as_json, **kw):
    """Train the residual predictor on DATA (run directories, .parquet or .csv) and compare it with
    the baselines on held-apart vehicles, with per-vehicle bootstrap intervals."""
    from carla_mr.errors import require
    from carla_mr.twin.experiment import pooled_gain, training_sets
    from carla_mr.twin.residual import ResidualPredictor
    from carla_mr.twin.residual_train import ResidualRecipe, fit

    require("torch", extra="genai", feature="twin train").set_num_threads(threads)
    seed = 0 if seed is None else seed
    try:
        hzs = [kw["sample_hz"]] if kw["sample_hz"] else [float(r) for r in rates.split(",") if r.strip()]
    except ValueError:
        raise InputError(f"rates must be a comma list of numbers, got {rates!r}", field="--rates") from None
    recipe = ResidualRecipe(hidden=hidden, layers=layers, epochs=epochs, batch_size=batch_size, lr=lr,
                            patience=patience, max_seconds=max_seconds, noise_m=noise_m)
    maps, test_maps = _maps(kw, len(data_paths), len(kw["test_data"]))
    map_inputs = any(m is not None for m in maps)
    init = _init_weights(init_model, past, future, map_inputs) if init_model else None
    reference = None
    if compare:
        from carla_mr.twin.predictors import load_predictor

        reference = load_predictor(compare, past=past, future=future)
    run_dir = make_run_dir(out, "twin-train")
    sources = _read(data_paths, kw)
    arrays, groups, train_keys, tests = training_sets(
        sources, hzs, past=past, future=future, test_fraction=test_fraction, seed=seed, max_windows=max_windows,
        max_test_windows=max_test_windows, noise_m=noise_m, load=_load_opts(kw), log=log, maps=maps,
        map_inputs=map_inputs, map_dropout=map_dropout, rate_balance=rate_balance)
    if not tests:
        raise InputError(f"no held-apart vehicle has a window of {past}+{future} samples at any rate; give longer "
                         f"tracks or lower --past/--future", field="DATA")
    log(f"training on {arrays['feat'].shape[0]} windows from {len(train_keys)} vehicles")
    unit = "(weighted)" if rate_balance else "m"
    params, norm, facts = fit(arrays, groups, recipe, seed=seed, init=init, on_epoch=lambda e, tl, vl: log(
        f"epoch {e}: train ADE {tl:.4f} {unit}, validation ADE {vl:.4f} {unit}"))
    facts.update(rates_hz=hzs, rate_balance=rate_balance)
    if init_model:
        facts["init"] = str(init_model)
    if map_inputs:
        facts.update(map_dropout=map_dropout, maps=[None if m is None else m.name for m in maps])
    model = ResidualPredictor(past, future, hzs[0], params=params, norm=norm, info=facts, train_keys=train_keys,
                              map_inputs=map_inputs, fallback=init)
    model_dir = model.save(run_dir / "model")
    for hz in sorted({t.hz for t in tests}):
        log(f"scoring held-apart vehicles at {hz:g} Hz")
    ref_overlap = None
    if reference is not None:
        ref_overlap = _overlap(reference, tests)
        log(f"--compare {compare}: {ref_overlap} held-apart vehicles were in its training data")
    results = _score_all(model, tests, past, future, seed, reference)
    extra = []
    if kw["test_data"]:
        ext, overlap = _test_sets(_read(kw["test_data"], kw), past, future, hz=kw["sample_hz"], load=_load_opts(kw),
                                  max_windows=max_test_windows, seed=seed, model_keys=set(train_keys),
                                  allow_overlap=False, maps=test_maps)
        extra = _score_all(model, ext, past, future, seed, reference)
    result = {"held_apart": results, "test_data": extra, "summary": pooled_gain(results + extra, "residual"),
              "training": facts, "data": {"sources": [s[4]["source"] for s in sources], "rates_hz": hzs,
                                          "past": past, "future": future, "test_fraction": test_fraction,
                                          "train_vehicles": len(train_keys)},
              "model_dir": str(model_dir), "run_dir": str(run_dir), "seed": seed,
              "map_inputs": map_inputs, "reference": None if reference is None else
              {"model": str(compare), "held_apart_in_its_training": ref_overlap}}
    atomic_write_json(run_dir / "metrics.json", result)
    emit(result, as_json=as_json, title=f"held-apart vehicles ({past} past / {future} future steps per rate)",
         columns=COLUMNS, rows=_rows(results + extra))


@twin_group.command(name="eval")
@click.argument("model")
@click.argument("data_paths", nargs=-1, required=False, metavar="[DATA...]")
@click.option("--past", type=click.IntRange(2, 10000), default=DEFAULT_PAST, show_default=True,
              help="Past steps (baselines only; a model carries its own).")
@click.option("--future", type=click.IntRange(1, 1000), default=DEFAULT_FUTURE, show_default=True)
@click.option("--max-windows", type=click.IntRange(1), default=200_000, show_default=True)
@click.option("--allow-train-overlap", is_flag=True, help="Score even data that holds the model's training "
                                                          "vehicles (said in the result).")
@_data_options
@common_options
@guarded
def eval_cmd(model, data_paths, past, future, max_windows, allow_train_overlap, out, seed, as_json, **kw):
    """Evaluate MODEL (a directory from `twin train`, or constant_velocity / zero_motion) and both
    baselines on every window of DATA (and --test-data), each source at its own rate."""
    from carla_mr.twin.experiment import pooled_gain
    from carla_mr.twin.predictors import load_predictor

    seed = 0 if seed is None else seed
    paths = list(data_paths) + list(kw["test_data"])
    if not paths:
        raise InputError("give DATA (or --test-data) to evaluate on", field="DATA")
    pred = load_predictor(model, past=past, future=future, sample_hz=kw["sample_hz"] or 2.0)
    P, F = pred.past, pred.future
    dmaps, tmaps = _maps(kw, len(data_paths), len(kw["test_data"]))
    if kw.get("maps") and not getattr(pred, "map_inputs", False):
        log(f"{model} takes no map inputs; --map is not used")
    run_dir = make_run_dir(out, "twin-eval")
    keys = set(getattr(pred, "train_keys", []) or [])
    tests, overlap = _test_sets(_read(paths, kw), P, F, hz=kw["sample_hz"], load=_load_opts(kw),
                                max_windows=max_windows, seed=seed, model_keys=keys,
                                allow_overlap=allow_train_overlap, maps=dmaps + tmaps)
    if not tests:
        raise InputError(f"no window of {P}+{F} samples in the data", field="DATA")
    results = _score_all(pred, tests, P, F, seed)
    result = {"results": results, "summary": pooled_gain(results, pred.kind),
              "model": {"source": str(model), "kind": pred.kind, "past": P, "future": F,
                        "map_inputs": bool(getattr(pred, "map_inputs", False))},
              "maps": [None if m is None else m.name for m in dmaps + tmaps],
              "train_overlap_vehicles": overlap, "upsampled": any(t.report.get("upsampled") for t in tests),
              "run_dir": str(run_dir)}
    atomic_write_json(run_dir / "metrics.json", result)
    emit(result, as_json=as_json, title=f"{model} ({P} past / {F} future steps at each source's rate)",
         columns=COLUMNS, rows=_rows(results))
