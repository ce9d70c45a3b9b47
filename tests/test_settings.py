"""The settings module: one parser that names the variable, every variable declared and documented."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from stancewatch import settings

REPO = Path(__file__).resolve().parent.parent
SOURCES = [p for d in ("model", "service", "training", "stancewatch", "bench") for p in (REPO / d).rglob("*.py")]


def test_defaults_load_from_an_empty_environment():
    cfg = settings.load({})
    assert cfg.max_sentences == 256 and cfg.max_doc_sentences == 2000 and cfg.threads is None
    assert cfg.access_log is True and cfg.backend == "auto" and cfg.reload_seconds == 10.0


@pytest.mark.parametrize(
    "name,value,expect",
    [
        ("STANCEWATCH_THREADS", "0", "expected an integer >= 1"),
        ("STANCEWATCH_THREADS", "two", "expected an integer >= 1"),
        ("STANCEWATCH_GATHER_MS", "-1", "expected a number >= 0"),
        ("STANCEWATCH_BACKEND", "cuda", "expected one of auto, torch, openvino"),
        ("STANCEWATCH_ACCESS_LOG", "maybe", "1/true/yes/on or 0/false/no/off"),
    ],
)
def test_a_bad_value_names_the_variable_the_value_and_what_is_allowed(name, value, expect):
    with pytest.raises(settings.SettingError) as err:
        settings.load({name: value})
    assert name in str(err.value) and repr(value) in str(err.value) and expect in str(err.value)


def test_values_are_parsed_with_one_convention():
    cfg = settings.load(
        {
            "STANCEWATCH_ACCESS_LOG": "OFF",
            "STANCEWATCH_BACKEND": " OpenVINO ",
            "STANCEWATCH_THREADS": "3",
            "STANCEWATCH_MAX_TOKENS": "",
        }
    )
    assert cfg.access_log is False and cfg.backend == "openvino" and cfg.threads == 3
    assert cfg.max_tokens == settings.variable("MAX_TOKENS").default  # blank means the default


def test_a_misspelt_variable_is_reported():
    assert settings.unknown({"STANCEWATCH_THREAD": "2", "STANCEWATCH_THREADS": "2"}) == ["STANCEWATCH_THREAD"]


def test_every_variable_the_code_names_is_declared_and_only_settings_reads_them():
    declared = {v.env for v in settings.VARIABLES}
    named, readers = set(), []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        named |= set(re.findall(r"STANCEWATCH_[A-Z][A-Z_]*[A-Z]", text))
        if path.name != "settings.py" and re.search(
            r"environ\.get\(\s*[\"']STANCEWATCH_|environ\[[\"']STANCEWATCH_\w+[\"']\](?!\s*=)", text
        ):
            readers.append(str(path.relative_to(REPO)))
    assert named - declared == set()
    assert readers == [], "these read STANCEWATCH_* themselves instead of through stancewatch.settings"


def test_the_readme_table_is_the_declared_one():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- settings-table -->\n", 1)[1].split("\n<!-- /settings-table -->", 1)[0]
    assert table == settings.markdown_table()
    printed = subprocess.run([sys.executable, "-m", "stancewatch.settings"], capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == table


def test_the_command_line_stops_on_a_bad_value_before_any_work(tmp_path):
    import os

    env = {**os.environ, "STANCEWATCH_THREADS": "0", "BENTOML_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "stancewatch.cli", "models", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "STANCEWATCH_THREADS='0' is too small: expected an integer >= 1" in done.stderr
    assert "Traceback" not in done.stderr
