"""The registries and the README agree: every strategy, detector and family a user can pick is documented, and the
README documents nothing that does not exist."""

import re
from pathlib import Path

import pytest

from sinkflow.interventions.base import INTERVENTIONS
from sinkflow.models.families.base import FAMILIES
from sinkflow.registry import Registry, UnknownName
from sinkflow.sinks.detectors.base import DETECTORS
from sinkflow.sinks.strategies.base import STRATEGIES

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_the_readme_strategy_table_lists_every_registered_strategy_training_free_first():
    table = README.split("| strategy | the visual block the LLM sees |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert sorted(rows) == STRATEGIES.names()
    words = {"six": 6, "seven": 7, "eight": 8}
    free = words[re.search(r"the first (\w+) are training-free", README).group(1)]
    assert [STRATEGIES[name].training_free for name in rows] == [True] * free + [False] * (len(rows) - free)


def test_the_readme_intervention_table_lists_every_registered_intervention():
    table = README.split("| intervention | where it acts |", 1)[1].split("\n\n", 1)[0]
    assert re.findall(r"^\| `(\w+)` \|", table, flags=re.M) == ["none", *sorted(set(INTERVENTIONS.names()) - {"none"})]


def test_the_readme_names_every_detector_and_family():
    detectors = re.search(r"`sink_strategy/detector=([\w|]+)`", README).group(1).split("|")
    assert sorted(detectors) == DETECTORS.names()
    families = re.search(r"families/ \(([\w, ]+):", README).group(1).split(", ")
    assert sorted(families) == FAMILIES.names()


def test_a_registry_refuses_a_second_entry_under_one_name_and_names_the_known_ones():
    registry = Registry("widget")  # no package to discover: entries come from register() alone

    class First:
        pass

    class Second:
        pass

    registry.register("first", First)
    registry.register("first", First)  # the same entry again (a module imported twice) is harmless
    with pytest.raises(ValueError, match="widget name 'first' is already registered by"):
        registry.register("first", Second)
    with pytest.raises(UnknownName, match=r"unknown widget 'second'; available: \['first'\]"):
        registry["second"]
    assert registry["first"] is First and list(registry) == ["first"] and "second" not in registry
