"""The example configurations in docs/examples/ are accepted as they stand.

Each is checked with ``gridmate <component> check-config`` in an environment
without secrets (no ``CREDENTIALS_DIRECTORY``, no ``GRIDMATE_*`` variables),
exactly as a user copying the file would first run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gridmate.components import all_components

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
COMPONENTS = [c.name for c in all_components()]


def _clean_environment(tmp_path: Path) -> dict[str, str]:
    # PYTHONPATH: how the Nix check phase finds the package under test.
    keep = {"PATH", "LANG", "LC_ALL", "SYSTEMROOT", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    # Relative state/runtime directories would land in the working directory.
    env["HOME"] = str(tmp_path)
    return env


def test_every_component_has_an_example() -> None:
    if not EXAMPLES.is_dir():
        pytest.skip("docs/examples is not part of this source tree")
    present = {p.stem for p in EXAMPLES.glob("*.toml")}
    assert set(COMPONENTS) <= present, f"no example for {sorted(set(COMPONENTS) - present)}"
    assert present <= set(COMPONENTS), f"examples for unknown components: {present}"


@pytest.mark.parametrize("component", COMPONENTS)
def test_example_passes_check_config_without_secrets(tmp_path: Path, component: str) -> None:
    example = EXAMPLES / f"{component}.toml"
    if not example.exists():
        pytest.skip(f"docs/examples/{component}.toml is not part of this source tree")
    result = subprocess.run(
        [sys.executable, "-m", "gridmate.cli", component, "check-config", "--config", str(example)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=_clean_environment(tmp_path),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    # What the file sets is what check-config reports: the example is not
    # silently ignored (a misplaced table would fail as an unknown key anyway).
    written = tomllib.loads(example.read_text())
    for key, value in written.items():
        if not isinstance(value, dict):
            assert effective[key] == value, key


@pytest.mark.parametrize("component", COMPONENTS)
def test_example_is_commented(component: str) -> None:
    example = EXAMPLES / f"{component}.toml"
    if not example.exists():
        pytest.skip(f"docs/examples/{component}.toml is not part of this source tree")
    text = example.read_text()
    assert text.startswith(f"# gridmate {component}")
    assert f"gridmate {component} check-config --config" in text
    # secrets are only ever named as credentials, never given a value
    assert "password =" not in text and "token =" not in text
