"""Exception types shared by every stage.

Library code raises these; only the CLI turns them into exit codes
(InputError -> 2, RunError and anything else -> 1).
"""

from __future__ import annotations


class CarlaMrError(Exception):
    """Base class of every error carla_mr raises on purpose."""

    exit_code = 1


class InputError(CarlaMrError, ValueError):
    """Bad input from the user: a scenario file, a flag, a data file, a parameter.

    The message names the offending field and says what was expected, so the user can fix it.
    """

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None):
        self.field = field
        self.source = source
        parts = []
        if source:
            parts.append(str(source))
        if field:
            parts.append(field)
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class RunError(CarlaMrError, RuntimeError):
    """A run failed for a reason other than bad input (a server died, a disk filled up)."""

    exit_code = 1


class MissingDependencyError(InputError):
    """An optional dependency is needed for the feature the user asked for."""

    def __init__(self, package: str, extra: str, feature: str):
        super().__init__(
            f"{feature} needs the optional package '{package}'. "
            f"Install it with: pip install 'carla-mr[{extra}]'"
        )
        self.package = package
        self.extra = extra


def require(module: str, *, extra: str, feature: str):
    """Import an optional module, or raise MissingDependencyError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(module.split(".")[0], extra, feature) from exc
