"""The packaged symmetric-keypoint table: a copy of the shared table, and consistent with the
left/right side of every SPair-71k keypoint (``spair_sides`` of the shared file)."""

import json
from importlib import resources

import pytest

from semcorr.data.symmetry import load_symmetry

LEFT, RIGHT = 1, 2


def _packaged() -> dict:
    return json.loads(resources.files("semcorr").joinpath("resources", "symmetry.json").read_text())


@pytest.fixture(scope="module")
def shared_table(shared_data):
    path = shared_data / "symmetric_keypoints.json"
    if not path.is_file():
        pytest.skip(f"shared symmetry table not found: {path}")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def sides(shared_table):
    if "spair_sides" not in shared_table:
        pytest.skip("the shared symmetric_keypoints.json has no 'spair_sides' (left/right of every "
                    "SPair-71k keypoint id); cannot check the table against it")
    return shared_table["spair_sides"]


def test_packaged_table_is_a_copy_of_the_shared_one(shared_table):
    packaged = _packaged()
    assert "regenerated from the shared symmetric_keypoints.json" in packaged["_about"]
    assert packaged["spair"] == shared_table["spair"]
    assert packaged["ap10k"] == shared_table["ap10k"]


def test_every_spair_pair_joins_a_left_and_a_right_keypoint(sides):
    table = load_symmetry()
    assert set(sides) == set(table.table["spair"])
    for category, side in sides.items():
        pairs = table.pairs("spair", category)
        for a, b in pairs:
            assert a < len(side) and b < len(side), (category, a, b)
            assert {side[a], side[b]} == {LEFT, RIGHT}, (category, a, b, side[a], side[b])
        listed = [i for pair in pairs for i in pair]
        sided = [i for i, s in enumerate(side) if s in (LEFT, RIGHT)]
        # every sided id is in exactly one pair, and no axis id is in any
        assert sorted(listed) == sorted(sided), category


def test_bus_uses_annotation_ids():
    bus = load_symmetry().pairs("spair", "bus")
    ids = {i for pair in bus for i in pair}
    assert not ids & {8, 9}  # dummies of GeoAware-SC's renumbered test-time list
    assert (28, 29) in bus and (14, 15) not in bus and (24, 25) not in bus


def test_ap10k_pairs_are_disjoint():
    pairs = load_symmetry().pairs("ap10k")
    ids = [i for pair in pairs for i in pair]
    assert len(ids) == len(set(ids)) and all(0 <= i < 17 for i in ids)
    assert all(a != b for a, b in pairs)
