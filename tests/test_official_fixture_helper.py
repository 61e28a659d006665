"""``conftest.fixtures_dir``: a missing fixture folder skips with the reason in a user's clone and is an
error in CI (``.ci/run`` sets ``VQDIFF_REQUIRE_FIXTURES=1``)."""

from __future__ import annotations


import pytest

from conftest import REPO_ROOT, fixtures_dir, fixtures_required


@pytest.fixture
def empty_root(tmp_path, monkeypatch):
    monkeypatch.setenv("VQDIFF_FIXTURES", str(tmp_path))
    return tmp_path


def test_missing_fixture_skips_with_its_path_in_a_user_clone(empty_root, monkeypatch):
    monkeypatch.delenv("VQDIFF_REQUIRE_FIXTURES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="official_tiny_ithq"):
        fixtures_dir("official_tiny_ithq")


@pytest.mark.parametrize("value", ["1", "yes"])
def test_missing_fixture_is_an_error_naming_the_path_when_required(empty_root, monkeypatch, value):
    monkeypatch.setenv("VQDIFF_REQUIRE_FIXTURES", value)
    with pytest.raises(pytest.fail.Exception) as info:
        fixtures_dir("official_tiny_uncond")
    assert str(empty_root / "official_tiny_uncond") in str(info.value)
    assert "VQDIFF_REQUIRE_FIXTURES" in str(info.value)


@pytest.mark.parametrize("value", ["", "0"])
def test_require_flag_off_values(monkeypatch, value):
    monkeypatch.setenv("VQDIFF_REQUIRE_FIXTURES", value)
    assert not fixtures_required()


def test_present_fixture_is_returned_when_required(empty_root, monkeypatch):
    monkeypatch.setenv("VQDIFF_REQUIRE_FIXTURES", "1")
    (empty_root / "here").mkdir()
    assert fixtures_dir("here") == empty_root / "here"


def test_ci_requires_the_fixtures_before_running_the_tests():
    lines = [ln.strip() for ln in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    flag = lines.index("export VQDIFF_REQUIRE_FIXTURES=1")
    tests = next(i for i, ln in enumerate(lines) if "pytest" in ln)
    assert flag < tests
