"""Conventions every `carla-mr` verb shares.

- ``--out DIR``: the run directory (default ``runs/<verb>-<UTC timestamp>``).
- ``--seed N``: the seed (default: the scenario's, else 0).
- ``--json``: the result as one JSON object on stdout; logs and progress go to stderr.
- Exit codes: 0 success, 2 bad input (:class:`~carla_mr.errors.InputError`, click usage
  errors), 1 any other failure. Set ``CARLA_MR_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import click

from carla_mr.errors import CarlaMrError, InputError
from carla_mr.io import to_jsonable


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def default_run_dir(verb: str) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    return Path("runs") / f"{verb}-{stamp}"


def make_run_dir(out: str | os.PathLike | None, verb: str, *, exist_ok: bool = True) -> Path:
    """Create (or reuse) the run directory and check it takes files.

    Anything in the way (a regular file on the path, a read-only or virtual file system such
    as ``/proc``, no permission) is an :class:`InputError` on ``--out`` naming the path.
    """
    path = Path(out) if out else default_run_dir(verb)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} exists and is not a directory; pick another --out", field="--out")
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError as exc:
        raise InputError(f"{path} already exists; pick another --out", field="--out") from exc
    except OSError as exc:
        raise InputError(f"cannot create {path}: {_why(exc, path)}; pick another --out", field="--out") from exc
    check_writable_dir(path, field="--out")
    return path


def _why(exc: OSError, path: Path) -> str:
    """A short reason for an OSError on ``path`` (names the ancestor that is a regular file)."""
    if isinstance(exc, NotADirectoryError) or exc.errno == 20:
        for parent in [path, *path.parents]:
            if parent.exists() and not parent.is_dir():
                return f"{parent} is a regular file, not a folder"
    if exc.errno == 2:  # ENOENT although mkdir(parents=True): a file system that takes no new entries
        existing = next((p for p in path.parents if p.exists()), None)
        if existing is not None:
            return f"{existing} does not accept new folders (a virtual or read-only file system such as /proc?)"
    return exc.strerror or str(exc)


def check_writable_dir(folder: Path, *, field: str) -> None:
    """Raise InputError (``field``) unless a file can be created in the existing ``folder``."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".carla_mr-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == 2:
            why = "it does not accept new files (a virtual or read-only file system such as /proc?)"
        raise InputError(f"cannot write into {folder}: {why}; pick another {field}", field=field) from exc


def out_option(f):
    return click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Run directory (default: runs/<verb>-<timestamp>).")(f)


def seed_option(f):
    return click.option("--seed", type=int, default=None, help="Random seed (default: the scenario's, else 0).")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, default=False,
                        help="Print the result as one JSON object on stdout; logs go to stderr.")(f)


def common_options(f):
    """Add --out, --seed and --json to a verb."""
    return out_option(seed_option(json_option(f)))


def guarded(f: Callable) -> Callable:
    """Turn carla_mr errors into clean messages and exit codes (2 bad input, 1 failure)."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except click.Abort:
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except InputError as exc:
            if os.environ.get("CARLA_MR_DEBUG"):
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except CarlaMrError as exc:
            if os.environ.get("CARLA_MR_DEBUG"):
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - last-resort boundary of the CLI
            traceback.print_exc() if os.environ.get("CARLA_MR_DEBUG") else None
            click.echo(f"error: {type(exc).__name__}: {exc} (set CARLA_MR_DEBUG=1 for a traceback)", err=True)
            sys.exit(1)

    return wrapper


def emit(result: dict[str, Any], *, as_json: bool, title: str | None = None,
         rows: Iterable[Sequence[Any]] | None = None, columns: Sequence[str] = ("metric", "value")) -> None:
    """Print a verb's result: one JSON object on stdout with --json, else a table on stdout."""
    if as_json:
        sys.stdout.write(json.dumps(to_jsonable(result), sort_keys=False) + "\n")
        sys.stdout.flush()
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=True)
    for c in columns:
        table.add_column(str(c))
    if rows is None:
        rows = [(k, _fmt(v)) for k, v in result.items() if not isinstance(v, (dict, list))]
    for r in rows:
        table.add_row(*[_fmt(c) for c in r])
    # piped output (CI logs, files) gets a wide table rather than rich's 80-column default
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1e5 or (0 < abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


@contextmanager
def progress(total: int | None, description: str, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr; yields ``advance(n=1)``."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=stderr_console(), transient=False) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


def log(message: str) -> None:
    """A log line on stderr (never on stdout, which --json reserves for the result)."""
    click.echo(message, err=True)
