"""Property: whatever the configuration file and the environment hold, ``check-config``
answers with exit 0 or with exit 2 and one ``configuration error`` line per problem,
never a traceback. Driven through the CLI's own entry point, ``gridmate.cli.main``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import types
import typing
from collections.abc import Iterator
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from gridmate.cli import main
from gridmate.components import all_components
from gridmate.runtime.secrets import Credential

COMPONENTS = {c.name: c for c in all_components()}


def _sections(annotation: Any) -> list[type[BaseModel]]:
    """The settings models inside a field's type (``X | None``, ``dict[str, X]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _sections(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType or origin in (list, dict, tuple):
        for argument in typing.get_args(annotation):
            found.extend(_sections(argument))
    return found


def _keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key a model accepts, with the ``*_file`` key of each secret."""
    for name, field in model.model_fields.items():
        yield (*prefix, name)
        if any(isinstance(m, Credential) for m in field.metadata):
            yield (*prefix, f"{name}_file")
        for section in _sections(field.annotation):
            yield from _keys(section, (*prefix, name))


KEYS = {name: sorted(set(_keys(c.settings_model))) for name, c in COMPONENTS.items()}

scalars = (
    st.text(max_size=40)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.dates()
    | st.datetimes()
    | st.times()
    | st.sampled_from(["", "0.0.0.0", "::", "/dev/null", "/", "a" * 5000, "postgresql://u:p@h/d"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


@st.composite
def toml_documents(draw: st.DrawFn, component: str) -> bytes:
    """Either arbitrary bytes or a TOML document setting known (and unknown) keys."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))
    key_paths = st.sampled_from(KEYS[component]) | st.lists(
        st.text(max_size=6), min_size=1, max_size=3
    ).map(tuple)
    assignments = draw(st.lists(st.tuples(key_paths, values), max_size=6))
    lines = [
        ".".join(json.dumps(part, ensure_ascii=False) for part in path) + " = " + toml_value(value)
        for path, value in assignments
    ]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@st.composite
def environments(draw: st.DrawFn, component: str) -> dict[str, str]:
    """Environment overrides for known keys; values may be any bytes, or very long."""
    names = st.sampled_from(KEYS[component]).map(
        lambda path: f"GRIDMATE_{component.upper()}_" + "__".join(path).upper()
    )
    raw = st.binary(max_size=60) | st.sampled_from([b"a" * 10_000, b"0.0.0.0", b"[1,", b"{}"])
    chosen = draw(st.dictionaries(names, raw, max_size=3))
    return {name: os.fsdecode(value.replace(b"\0", b"")) for name, value in chosen.items()}


@contextlib.contextmanager
def environment(overrides: dict[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("GRIDMATE_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name in [k for k in os.environ if k.startswith("GRIDMATE_")]:
            del os.environ[name]
        os.environ.update(saved)


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str], str]:
    component = draw(st.sampled_from(sorted(COMPONENTS)))
    where = draw(st.sampled_from(["file", "file", "file", "directory", "missing", "none"]))
    return component, draw(toml_documents(component)), draw(environments(component)), where


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_check_config_answers_every_input_with_a_result_or_one_line_errors(case):
    component, document, overrides, where = case
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "gridmate.toml"
        config.write_bytes(document)
        argv = [component, "check-config"]
        if where == "file":
            argv += ["--config", str(config)]
        elif where == "directory":
            argv += ["--config", directory]
        elif where == "missing":
            argv += ["--config", str(Path(directory) / "absent.toml")]
        out, err = io.StringIO(), io.StringIO()
        with (
            environment(overrides),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = main(argv)
    errors = err.getvalue()
    assert "Traceback" not in errors
    if code == 0:
        json.loads(out.getvalue())  # the effective settings
        assert errors.strip() == f"gridmate {component}: configuration OK"
    else:
        assert code == 2, (code, errors)
        lines = errors.splitlines()
        assert lines
        for line in lines:
            assert line.startswith(f"gridmate {component}: configuration error: "), line
            assert len(line) < 600, line
