"""What `pip install hadis` relies on: the data is package data of `hadis`, found with
importlib.resources (the checkout's profiles/ through the hadis/profiles link here, the wheel's copy
when installed; `make test-wheel` checks the wheel), HADIS_PROFILES_DIR replaces it, and the public
import `hadis` re-exports the client and says when another project's `shared` hides ours."""

from __future__ import annotations

import sys
import types
from importlib import resources
from pathlib import Path

import pytest

import hadis
from shared import client, schemas, settings
from shared.profiles import PROFILES_DIR, profiles_dir

ROOT = Path(__file__).resolve().parents[1]


def test_the_profiles_are_the_checkouts_through_the_hadis_package():
    packaged = resources.files("hadis") / "profiles"
    assert PROFILES_DIR == packaged and PROFILES_DIR.resolve() == (ROOT / "profiles").resolve()
    assert (PROFILES_DIR / "routers" / "learned-minilm.json").is_file()
    assert (PROFILES_DIR / "reference" / "prompts.txt").is_file()


def test_hadis_profiles_dir_replaces_the_packaged_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HADIS_PROFILES_DIR", str(tmp_path))
    assert profiles_dir() == tmp_path
    monkeypatch.setenv("HADIS_PROFILES_DIR", "")
    assert profiles_dir() == PROFILES_DIR


def test_the_public_import_is_the_client_and_its_schemas():
    from hadis import Client, Job, JobRecord, JobState, Settings, submit_and_wait

    assert (Client, submit_and_wait) == (client.Client, client.submit_and_wait)
    assert (Job, JobRecord, JobState, Settings) == (schemas.Job, schemas.JobRecord, schemas.JobState,
                                                    settings.Settings)
    assert set(hadis.__all__) <= set(dir(hadis))
    with pytest.raises(AttributeError, match="no attribute 'Store'"):
        _ = hadis.Store


def test_another_projects_shared_is_named(monkeypatch):
    monkeypatch.delitem(hadis.__dict__, "Client", raising=False)
    impostor = types.ModuleType("shared")
    impostor.__path__ = ["/elsewhere/shared"]
    monkeypatch.setitem(sys.modules, "shared", impostor)
    with pytest.raises(ImportError, match=r"\['/elsewhere/shared'\] is not hadis's"):
        _ = hadis.Client


def test_the_dashboards_page_is_package_data():
    """The operator's page ships in the wheel (pyproject's package-data for services.api; make
    test-wheel checks the built archives) and is read through importlib.resources, as installed."""
    import tomllib

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    static = ROOT / "services" / "api" / "static"
    files = sorted(path.name for path in static.iterdir())
    assert files == ["dashboard.css", "dashboard.html", "dashboard.js"]
    for name in files:
        assert any(Path("static", name).match(pattern) for pattern in package_data["services.api"]), name
        assert (resources.files("services.api") / "static" / name).read_bytes() == (static / name).read_bytes()
    page = (static / "dashboard.html").read_text() + (static / "dashboard.js").read_text() + \
        (static / "dashboard.css").read_text()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page, \
        "the page fetches nothing from elsewhere (no CDN, no fonts)"
