"""Every carla.* member the backend uses exists in the installed wheel with a compatible signature.

Signatures come from the Boost.Python docstrings of the real wheel (``name( (T)arg1, (T)x
[, (T)y=default]) -> R``), so a renamed method, a removed keyword or a changed arity fails here.
Three sources of uses are checked: the backend's declared list (CARLA_API), every call the
stand-in server logged during full runs, and every member the stand-in's objects expose.
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

carla = pytest.importorskip("carla")

from carla_mr.testing import carla_standin  # noqa: E402
from carla_mr.world.carla_api import CARLA_API
from carla_mr.world.carla_backend import CarlaWorld  # noqa: E402

_HEAD = re.compile(r"^\s*(\w+)\((.*)\)\s*->\s*(.+?)\s*:\s*$")
_PARAM = re.compile(r"^\((\w+)\)(\w+)(?:=(.*))?$")


def parse_overloads(doc: str) -> list[list[tuple[str, str, bool]]]:
    """Boost.Python docstring -> overloads, each a list of (type, name, optional) incl. self."""
    out = []
    for line in (doc or "").splitlines():
        m = _HEAD.match(line)
        if not m:
            continue
        params, optional = [], False
        for raw in re.split(r",(?![^<]*>)", m.group(2)):
            tok = raw.strip()
            if tok.startswith("["):  # "[, (T)x" : this and later parameters are optional
                optional = True
            opens_after = tok.endswith("[")  # "(T)x [" : later parameters are optional
            tok = tok.strip("[] ").strip()
            if tok:
                pm = _PARAM.match(tok)
                assert pm, f"unparsed parameter {tok!r} in {line!r}"
                params.append((pm.group(1), pm.group(2), optional or pm.group(3) is not None))
            optional = optional or opens_after
        out.append(params)
    return out


def test_parser_reads_real_docstrings():
    ov = parse_overloads(carla.Client.load_world.__doc__)
    assert ov == [[("Client", "arg1", False), ("str", "map_name", False), ("bool", "reset_settings", True),
                   ("MapLayer", "map_layers", True)]]
    assert len(parse_overloads(carla.command.SpawnActor.__init__.__doc__)) == 6


_PY = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool, int), "list": (list,)}


def _type_ok(tname: str, value) -> bool:
    if isinstance(value, str) and value.startswith("<"):
        return True  # a placeholder in CARLA_API for an object argument
    if tname in _PY:  # Boost.Python enums are int subclasses; numpy ints are not
        return isinstance(value, _PY[tname])
    if tname == "GBufferTextureID":  # Boost names unsigned ints this way in 0.9.16 docstrings
        return type(value) is int
    return not isinstance(value, (np.generic,))  # numpy scalars never convert to libcarla types


def compatible(overloads, args: tuple, kwargs: dict, *, bound: bool = True) -> str | None:
    """None when some overload accepts the call, else why not."""
    why = []
    for params in overloads:
        ps = params[1:] if bound else params
        if len(args) > len(ps):
            why.append(f"{len(args)} positional > {len(ps)}")
            continue
        rest = ps[len(args):]
        names = {p[1] for p in rest}
        bad_kw = [k for k in kwargs if k not in names]
        if bad_kw:
            why.append(f"unknown keyword(s) {bad_kw}")
            continue
        missing = [p[1] for p in rest if not p[2] and p[1] not in kwargs]
        if missing:
            why.append(f"missing {missing}")
            continue
        bad_t = [(p[0], a) for p, a in zip(ps, args) if not _type_ok(p[0], a)]
        bad_t += [(p[0], kwargs[p[1]]) for p in rest if p[1] in kwargs and not _type_ok(p[0], kwargs[p[1]])]
        if bad_t:
            why.append(f"argument types {bad_t}")
            continue
        return None
    return "; ".join(why) or "no overload"


def resolve(dotted: str):
    """'World.tick' -> (owner class, member name)."""
    parts = dotted.split(".")
    obj = carla
    for p in parts[:-1]:
        obj = getattr(obj, p)
    return obj, parts[-1]


@pytest.mark.parametrize("name", sorted(CARLA_API))
def test_declared_api_exists_with_compatible_signature(name):
    kind, sample = CARLA_API[name]
    owner, member = resolve(name)
    assert hasattr(owner, member), f"carla.{name} does not exist in carla {carla.__file__}"
    obj = getattr(owner, member)
    if kind == "settable":
        assert isinstance(obj, property) and obj.fset is not None, f"carla.{name} is not a settable attribute"
    elif kind == "method":
        args, kwargs = sample
        ov = parse_overloads(obj.__doc__)
        assert ov, f"carla.{name} has no Boost.Python signature (not a method?)"
        why = compatible(ov, tuple(args), dict(kwargs))
        assert why is None, f"carla.{name}{tuple(args)} {kwargs}: {why}"


@pytest.mark.parametrize("cosim", [False, True], ids=["tm", "cosim"])
def test_every_call_of_a_full_run_is_declared_and_compatible(make_server, town_scenario, full_run, cosim):
    srv = make_server()
    sc = town_scenario(carla={"cosim_sumo": cosim})
    w = CarlaWorld(sc, client_factory=srv.client_factory, owns_signals=False)
    full_run(w, srv, ticks=2)
    assert srv.calls, "the stand-in logged no calls"
    used = sorted({c[0] for c in srv.calls})
    undeclared = [u for u in used if u not in CARLA_API]
    assert not undeclared, f"calls missing from CARLA_API: {undeclared}"
    problems = []
    for name, args, kwargs in srv.calls:
        owner, member = resolve(name)
        ov = parse_overloads(getattr(owner, member).__doc__)
        why = compatible(ov, args, kwargs)
        if why is not None:
            problems.append(f"{name}{args!r:.80} {kwargs}: {why}")
    assert not problems, "\n".join(sorted(set(problems))[:10])


def test_a_numpy_integer_argument_is_caught():
    # the check is able to fail: Boost.Python rejects numpy ints for unsigned int parameters
    ov = parse_overloads(carla.command.DestroyActor.__init__.__doc__)
    assert compatible(ov, (np.int64(5),), {}) is not None
    assert compatible(ov, (5,), {}) is None
    ov = parse_overloads(carla.Client.load_world.__doc__)
    assert compatible(ov, ("Town01",), {"reset_setings": False}) is not None


def _standin_classes():
    for _, cls in inspect.getmembers(carla_standin, inspect.isclass):
        if getattr(cls, "_carla_class", None) and cls.__module__ == carla_standin.__name__:
            yield cls


@pytest.mark.parametrize("cls", list(_standin_classes()), ids=lambda c: c.__name__)
def test_standin_offers_only_real_members(cls):
    real_owner, real_name = resolve(cls._carla_class) if "." in cls._carla_class else (carla, cls._carla_class)
    real = getattr(real_owner, real_name)
    public = {n for n in vars(cls) if not n.startswith("_")}
    for base in cls.__mro__[1:]:
        if getattr(base, "_carla_class", None):
            public |= {n for n in vars(base) if not n.startswith("_")}
    missing = sorted(n for n in public if not hasattr(real, n))
    assert not missing, f"stand-in {cls.__name__} offers {missing}, which carla.{cls._carla_class} lacks"


def test_standin_instances_offer_only_real_attributes(make_server, town_scenario):
    srv = make_server()
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False)
    w.reset()
    samples = [w.world, w.client, w.tm, w.world.get_snapshot(), w.world.get_snapshot().timestamp,
               next(iter(srv.actors.values()))]
    w.close()
    for obj in samples:
        real = getattr(carla, type(obj)._carla_class)
        extra = sorted(n for n in vars(obj) if not n.startswith("_") and not n.startswith("sim_")
                       and not hasattr(real, n))
        assert not extra, f"{type(obj).__name__} instance attributes {extra} are not on carla.{real.__name__}"


def test_minimum_version_message():
    from carla_mr.errors import RunError
    from carla_mr.world.carla_api import check_version, parse_version

    assert parse_version("0.9.15-1-g8854804f4") == (0, 9, 15)
    assert parse_version("0.9.16") == (0, 9, 16)
    check_version("0.9.15", "server")
    check_version("0.9.16", "server")
    for old in ("0.9.14", "0.9.13"):  # cp38-only wheels: not supported
        with pytest.raises(RunError, match=r"supports CARLA 0\.9\.15 and 0\.9\.16"):
            check_version(old, "server")


def test_old_server_is_refused_and_nothing_is_changed(make_server, town_scenario):
    from carla_mr.errors import RunError

    srv = make_server(version="0.9.14")
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False)
    with pytest.raises(RunError, match="0.9.14"):
        w.reset()
    assert srv.settings["synchronous_mode"] is False
    assert not srv.tagged("carla_mr/")


def test_unreachable_server_message(make_server, town_scenario):
    from carla_mr.errors import RunError

    srv = make_server()
    srv.refuse_connections = True
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False)
    with pytest.raises(RunError, match="cannot reach a CARLA server at 127.0.0.1:2000"):
        w.reset()


def test_every_declared_member_is_used_by_the_code():
    from pathlib import Path

    import carla_mr.world.carla_api as api

    here = Path(api.__file__).parent
    text = (here / "carla_api.py").read_text()
    a = text.index("CARLA_API: dict")
    b = text.index("\n}\n", a)
    # the backend also hands the server's map to the embedded backend's map and RSU helpers
    code = text[:a] + text[b:] + "".join((here / f).read_text() for f in
                                         ("carla_backend.py", "carla_connection.py", "carla_actors.py",
                                          "carla_cameras.py", "carla_textures.py", "cosim.py", "maps.py", "rsu.py"))
    unused = []
    for name in CARLA_API:
        owner, member = name.rsplit(".", 1)
        token = owner.rsplit(".", 1)[-1] if member == "__init__" else member
        if token.startswith("__"):  # __iter__ and friends are used by Python syntax
            continue
        if not re.search(r"\b" + re.escape(token) + r"\b", code):
            unused.append(name)
    assert not unused, f"CARLA_API lists members the code never uses: {unused}"
