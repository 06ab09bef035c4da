"""One headless OpenGL context per process (moderngl on EGL), or a clear reason why not.

The embedded camera renders through OpenGL when a context can be created: Mesa's llvmpipe
on CPU-only machines, the GPU's driver where one exists. ``CARLA_MR_RENDERER`` picks the
renderer: ``auto`` (default: OpenGL when available, else the CPU rasteriser with a warning),
``gl`` (OpenGL or an error) or ``cpu`` (the CPU rasteriser).

What a fresh machine needs: ``pip install moderngl`` and the EGL/Mesa system libraries
(Debian/Ubuntu: ``apt-get install libegl1 libgl1 libgl1-mesa-dri libegl-mesa0``).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from carla_mr.errors import RunError

#: What to install when no context can be created (the warning and the error name it).
INSTALL_HINT = ("pip install moderngl, and the EGL/Mesa system libraries "
                "(Debian/Ubuntu: apt-get install libegl1 libgl1 libgl1-mesa-dri libegl-mesa0)")
RENDERER_ENV = "CARLA_MR_RENDERER"

_LOCK = threading.Lock()
_CTX: Any = None
_ERROR: str | None = None


def renderer_choice() -> str:
    """``auto``, ``gl`` or ``cpu`` from ``CARLA_MR_RENDERER`` (anything else reads as auto)."""
    v = os.environ.get(RENDERER_ENV, "auto").strip().lower()
    return v if v in ("auto", "gl", "cpu") else "auto"


def _create() -> Any:
    import moderngl

    errors = []
    for kwargs in ({"backend": "egl"}, {}):
        try:
            return moderngl.create_standalone_context(require=330, **kwargs)
        except Exception as exc:  # noqa: BLE001 - moderngl/glcontext raise plain Exceptions
            errors.append(f"{kwargs or 'default'}: {exc}")
    raise RuntimeError("; ".join(errors))


def gl_context() -> Any:
    """The process's moderngl context (created on first use); RunError naming what to install
    when none can be created."""
    global _CTX, _ERROR
    with _LOCK:
        if _CTX is not None:
            return _CTX
        if _ERROR is not None:
            raise RunError(f"no OpenGL context: {_ERROR}; install {INSTALL_HINT}")
        try:
            _CTX = _create()
        except ImportError as exc:
            _ERROR = f"moderngl is not installed ({exc})"
        except Exception as exc:  # noqa: BLE001
            _ERROR = f"EGL/OpenGL context creation failed ({exc})"
        if _CTX is None:
            raise RunError(f"no OpenGL context: {_ERROR}; install {INSTALL_HINT}")
        return _CTX


def gl_available() -> tuple[bool, str]:
    """(True, renderer string) when an OpenGL context exists or can be made, else (False, why)."""
    try:
        ctx = gl_context()
    except RunError as exc:
        return False, str(exc)
    info = ctx.info
    return True, f"{info.get('GL_RENDERER', '?')} (OpenGL {info.get('GL_VERSION', '?')})"
