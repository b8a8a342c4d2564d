"""Registries find their entries by discovery, refuse bad declarations and name what they know."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from prunelab.errors import PrunelabError
from prunelab.methods import PruningMethod, UnitScores, register
from prunelab.registry import METHODS, Registry


def test_method_names_come_from_the_module_files_without_importing_them(monkeypatch):
    fresh = Registry("method", "test", discover="prunelab.methods", per_module=True)
    for name in ("bip", "interaction"):
        monkeypatch.delitem(sys.modules, f"prunelab.methods.{name}", raising=False)
    assert {"bip", "interaction", "flap"} <= set(fresh.names())
    assert "prunelab.methods.bip" not in sys.modules
    with pytest.raises(ValueError, match="already registered"):
        fresh.add("bip", object)  # only prunelab/methods/bip.py may register "bip"


def test_unknown_name_suggests_the_close_one():
    with pytest.raises(PrunelabError, match="Unknown method 'flapp'. Did you mean: 'flap'"):
        METHODS.get("flapp")


def test_a_plugin_method_is_found_through_its_entry_point(tmp_path, monkeypatch):
    (tmp_path / "my_plugin.py").write_text(
        "from prunelab.methods import PruningMethod\n\n"
        "class Plugin(PruningMethod):\n    removes = 'nothing'\n")
    dist = tmp_path / "my_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[prunelab.methods]\nmine = my_plugin:Plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("method", "test", discover="prunelab.methods", per_module=True,
                        entry_point_group="prunelab.methods")
    assert "mine" in registry.names()
    assert registry.get("mine").__name__ == "Plugin"


@dataclass
class _Nothing:
    pass


def _scorer(**declarations) -> type:
    def score_block(self, index, layer, stats, comparable):
        return UnitScores(None, None)

    return type("Scorer", (PruningMethod,), {"score_block": score_block, **declarations})


def test_unknown_capability_fails_at_registration_naming_it():
    with pytest.raises(TypeError, match="capability 'sequentail'. Did you mean: 'sequential'"):
        register("bad_capability")(_scorer(needs=frozenset({"sequentail"})))
    assert "bad_capability" not in METHODS


def test_unknown_statistic_kind_fails_at_registration_naming_it():
    with pytest.raises(TypeError, match="Unknown statistic kind 'attn_inputs'"):
        register("bad_statistic")(_scorer(statistics=("attn_inputs",)))


def test_a_scorer_that_does_not_score_what_it_removes_is_refused():
    with pytest.raises(TypeError, match="removes blocks but does not define score_blocks"):
        register("bad_scorer")(_scorer(removes="blocks"))
    with pytest.raises(TypeError, match="needs module_effects but does not define"):
        register("bad_effects")(_scorer(needs=frozenset({"module_effects"})))


def test_sequential_needs_unit_scores():
    with pytest.raises(TypeError, match="sequential calibration allocates heads and channels"):
        register("bad_sequential")(_scorer(removes="nothing", needs=frozenset({"sequential"})))


def test_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register("flap")(_scorer())
