"""``carla-mr twin``: train and evaluate trajectory predictors.

- ``carla-mr twin train DATA... --out DIR``: load tracks (run directories, .parquet, .csv),
  hold apart a share of the VEHICLES for testing, train the LSTM on the rest, and report ADE,
  FDE, per-step error, miss rate and R2 (absolute and displacement) of the LSTM and both
  baselines on the held-apart vehicles. Writes ``DIR/model/`` (config.json + weights.npz),
  ``DIR/metrics.json``.
- ``carla-mr twin eval MODEL DATA...``: the same metrics of a saved model (or a baseline name)
  and both baselines on every window of DATA.
"""

from __future__ import annotations

import click

from carla_mr.cli_common import common_options, emit, guarded, log, make_run_dir, progress
from carla_mr.errors import InputError
from carla_mr.io import atomic_write_json
from carla_mr.config.twin import DEFAULT_FUTURE, DEFAULT_PAST, DEFAULT_SAMPLE_HZ


def _data_options(f):
    opts = [
        click.option("--sample-hz", type=float, default=None,
                     help=f"Resample tracks to this rate, Hz (train default {DEFAULT_SAMPLE_HZ:g}; "
                          "eval: the model's)."),
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
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _load(paths, *, sample_hz, min_samples, role, id_col, time_col, x_col, y_col, lon_col, lat_col, time_unit,
          max_gap_s):
    from carla_mr.twin import data

    cols = {"id": id_col, "time": time_col, "x": x_col, "y": y_col, "lon": lon_col, "lat": lat_col}
    parts, infos = [], []
    for p in paths:
        tr, info = data.load_tracks(p, sample_hz=sample_hz, min_samples=min_samples, columns=cols,
                                    time_unit=time_unit, role=role, max_gap_s=max_gap_s)
        info["report"] = dict(tr.report)
        log(f"{p}: {tr.n_tracks} tracks, {int(tr.lengths.sum())} samples at {sample_hz:g} Hz; "
            f"skipped/repaired: " + ", ".join(f"{k}={v}" for k, v in tr.report.items() if k not in
                                              ("rows_in", "tracks", "samples")))
        parts.append(tr)
        infos.append(info)
    return data.concat(parts), infos


def _evaluate_all(predictors: dict, past, future) -> dict:
    from carla_mr.twin import metrics

    return metrics.compare({name: p.predict(past) for name, p in predictors.items()}, past, future)


def _show(result: dict, keys: list[str], as_json: bool, title: str) -> None:
    from carla_mr.twin.metrics import METRIC_COLUMNS, metric_rows

    emit(result, as_json=as_json, title=title, columns=METRIC_COLUMNS,
         rows=metric_rows({k: result[k] for k in keys}))


@click.group(name="twin")
def twin_group():
    """Digital-twin trajectory predictors: train, eval."""


@twin_group.command(name="train")
@click.argument("data_paths", nargs=-1, required=True, metavar="DATA...")
@click.option("--past", type=click.IntRange(2, 10000), default=DEFAULT_PAST, show_default=True, help="Past samples P.")
@click.option("--future", type=click.IntRange(1, 1000), default=DEFAULT_FUTURE, show_default=True,
              help="Predicted samples F.")
@click.option("--epochs", type=click.IntRange(1), default=500, show_default=True, help="At most this many epochs.")
@click.option("--batch-size", type=click.IntRange(1), default=40, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--dropout", type=float, default=0.05, show_default=True)
@click.option("--hidden", type=click.IntRange(1), default=32, show_default=True, help="LSTM hidden units.")
@click.option("--layers", type=click.IntRange(1), default=1, show_default=True)
@click.option("--patience", type=click.IntRange(0), default=25, show_default=True,
              help="Stop after this many epochs without validation improvement (0: never).")
@click.option("--max-seconds", type=float, default=None, help="Stop training after this wall time.")
@click.option("--no-residual", is_flag=True, help="Predict displacements directly, not the correction to "
                                                 "constant velocity.")
@click.option("--test-fraction", type=float, default=0.2, show_default=True, help="Share of vehicles held apart.")
@click.option("--window-step", type=click.IntRange(1), default=1, show_default=True,
              help="Training windows start every this many samples.")
@click.option("--max-windows", type=click.IntRange(1), default=50_000, show_default=True,
              help="Train on a random subset of at most this many windows.")
@click.option("--max-test-windows", type=click.IntRange(1), default=200_000, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="torch threads.")
@_data_options
@common_options
@guarded
def train_cmd(data_paths, past, future, epochs, batch_size, lr, dropout, hidden, layers, patience, max_seconds,
              no_residual, test_fraction, window_step, max_windows, max_test_windows, threads, sample_hz, role,
              id_col, time_col, x_col, y_col, lon_col, lat_col, time_unit, max_gap_s, out, seed, as_json):
    """Train the LSTM on DATA (run directories, .parquet or .csv) and compare it with the baselines
    on held-apart vehicles."""
    from carla_mr.errors import require
    from carla_mr.twin import data
    from carla_mr.twin.predictors import ConstantVelocity, LSTMPredictor, LSTMRecipe, ZeroMotion

    torch = require("torch", extra="genai", feature="twin train")
    torch.set_num_threads(threads)
    seed = 0 if seed is None else seed
    hz = DEFAULT_SAMPLE_HZ if sample_hz is None else sample_hz
    recipe = LSTMRecipe(epochs=epochs, batch_size=batch_size, lr=lr, dropout=dropout, hidden=hidden, layers=layers,
                        residual=not no_residual, patience=patience or None, max_seconds=max_seconds)
    run_dir = make_run_dir(out, "twin-train")
    tracks, infos = _load(data_paths, sample_hz=hz, min_samples=past + future, role=role, id_col=id_col,
                          time_col=time_col, x_col=x_col, y_col=y_col, lon_col=lon_col, lat_col=lat_col,
                          time_unit=time_unit, max_gap_s=max_gap_s)
    train, test = data.split_by_vehicle(tracks, test_fraction, seed)
    n_train_all = int(data.window_starts(train, past, future, window_step).size)
    tp, tf, groups = data.windows(train, past, future, step=window_step, max_windows=max_windows, seed=seed)
    n_test_all = int(data.window_starts(test, past, future, 1).size)
    xp, xf, _ = data.windows(test, past, future, step=1, max_windows=max_test_windows, seed=seed + 1)
    if len(tp) < 2 or len(xp) < 1:
        raise InputError(f"too few windows of {past}+{future} samples (train {len(tp)}, test {len(xp)}); give "
                         f"longer tracks or lower --past/--future", field="DATA")
    log(f"train: {len(tp)} windows ({n_train_all} available) from {len(set(groups.tolist()))} vehicles; "
        f"test: {len(xp)} windows ({n_test_all} available) from held-apart vehicles")
    lstm = LSTMPredictor(past, future, hz, recipe)
    with progress(epochs, "training LSTM", enabled=not as_json) as advance:
        def on_epoch(e, tl, vl):
            advance(1)
            if as_json and (e == 1 or e % 10 == 0):
                log(f"epoch {e}: train {tl:.4f} val {vl:.4f}")
        train_info = lstm.fit(tp, tf, groups=groups, seed=seed, on_epoch=on_epoch)
    model_dir = lstm.save(run_dir / "model")
    res = _evaluate_all({"lstm": lstm, "constant_velocity": ConstantVelocity(past, future, hz),
                         "zero_motion": ZeroMotion(past, future, hz)}, xp, xf)
    result = {**res,
              "data": {"sources": infos, "sample_hz": hz, "past": past, "future": future,
                       "vehicles": int(len(set(tracks.vehicle.tolist()))), "test_vehicles":
                       int(len(set(test.vehicle.tolist()))), "train_windows": int(len(tp)),
                       "train_windows_available": n_train_all, "test_windows": int(len(xp)),
                       "test_windows_available": n_test_all, "test_fraction": test_fraction,
                       "skipped": tracks.report},
              "training": train_info, "model_dir": str(model_dir), "run_dir": str(run_dir), "seed": seed}
    atomic_write_json(run_dir / "metrics.json", result)
    _show(result, ["lstm", "constant_velocity", "zero_motion"], as_json,
          f"held-apart vehicles: {len(xp)} windows ({past} past / {future} future at {hz:g} Hz)")


@twin_group.command(name="eval")
@click.argument("model")
@click.argument("data_paths", nargs=-1, required=True, metavar="DATA...")
@click.option("--past", type=click.IntRange(2, 10000), default=DEFAULT_PAST, show_default=True,
              help="Past samples (baselines only; a model carries its own).")
@click.option("--future", type=click.IntRange(1, 1000), default=DEFAULT_FUTURE, show_default=True)
@click.option("--window-step", type=click.IntRange(1), default=1, show_default=True)
@click.option("--max-windows", type=click.IntRange(1), default=200_000, show_default=True)
@_data_options
@common_options
@guarded
def eval_cmd(model, data_paths, past, future, window_step, max_windows, sample_hz, role, id_col, time_col, x_col,
             y_col, lon_col, lat_col, time_unit, max_gap_s, out, seed, as_json):
    """Evaluate MODEL (a directory from `twin train`, or constant_velocity / zero_motion) and both
    baselines on every window of DATA."""
    from carla_mr.twin import data
    from carla_mr.twin.predictors import BASELINES, ConstantVelocity, ZeroMotion, load_predictor

    seed = 0 if seed is None else seed
    pred = load_predictor(model, past=past, future=future, sample_hz=sample_hz or DEFAULT_SAMPLE_HZ)
    if model not in BASELINES and sample_hz is not None and abs(sample_hz - pred.sample_hz) > 1e-9:
        raise InputError(f"the model was trained at {pred.sample_hz:g} Hz; evaluate it at that rate "
                         f"(drop --sample-hz)", field="--sample-hz")
    P, F, hz = pred.past, pred.future, pred.sample_hz
    run_dir = make_run_dir(out, "twin-eval")
    tracks, infos = _load(data_paths, sample_hz=hz, min_samples=P + F, role=role, id_col=id_col, time_col=time_col,
                          x_col=x_col, y_col=y_col, lon_col=lon_col, lat_col=lat_col, time_unit=time_unit,
                          max_gap_s=max_gap_s)
    n_all = int(data.window_starts(tracks, P, F, window_step).size)
    xp, xf, _ = data.windows(tracks, P, F, step=window_step, max_windows=max_windows, seed=seed)
    if len(xp) == 0:
        raise InputError(f"no window of {P}+{F} samples in the data", field="DATA")
    preds = {"constant_velocity": ConstantVelocity(P, F, hz), "zero_motion": ZeroMotion(P, F, hz)}
    if pred.kind not in preds:
        preds = {pred.kind: pred, **preds}
    res = _evaluate_all(preds, xp, xf)
    result = {**res, "model": {"source": str(model), "kind": pred.kind, "past": P, "future": F, "sample_hz": hz},
              "data": {"sources": infos, "windows": int(len(xp)), "windows_available": n_all,
                       "skipped": tracks.report}, "run_dir": str(run_dir)}
    atomic_write_json(run_dir / "metrics.json", result)
    _show(result, list(preds), as_json, f"{model} on {len(xp)} windows ({P} past / {F} future at {hz:g} Hz)")
