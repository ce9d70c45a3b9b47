"""The wheel: one top-level package, its data files, and a core install without torch or Ray."""

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (path,) = out.glob("stancewatch-*.whl")
    return zipfile.ZipFile(path)


@pytest.mark.slow
def test_the_wheel_installs_nothing_at_top_level_but_stancewatch(wheel):
    names = wheel.namelist()
    assert {n.split("/")[0] for n in names} == {
        "stancewatch",
        next(n for n in names if ".dist-info/" in n).split("/")[0],
    }
    for part in (
        "model/schema.py",
        "service/service.py",
        "training/train.py",
        "scoring/pipeline.py",
        "settings.py",
        "model/default_schema.yaml",
        "service/static/ui.html",
        "training/data/news_train.csv",
    ):
        assert f"stancewatch/{part}" in names, part


@pytest.mark.slow
def test_a_core_install_pulls_neither_torch_nor_ray(wheel):
    from packaging.requirements import Requirement

    meta = Parser().parsestr(
        wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    )
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]

    def names(extra: str) -> set[str]:
        return {r.name.lower() for r in requires if r.marker is None or r.marker.evaluate({"extra": extra})}

    core = names("")
    assert core.isdisjoint({"torch", "ray", "transformers", "datasets", "nncf", "scikit-learn"}), core
    assert {"openvino", "bentoml", "tokenizers"} <= core
    assert {"torch", "transformers", "nncf"} <= names("train") and "ray" in names("ray")
