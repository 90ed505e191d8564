"""Hand-written scenarios of the simulator with golden traces (tests/sim/scenarios/*.txt), in the
shape of etcd raft's data-driven tests: each file gives a run (its parameters and faults) and the
trace it must produce (the world's notes and each member's decisions, in order). Each is a past bug:
with the fix undone (its patch in tests/sim/patches.py) the run must break an invariant, and with
the code as it is, it must produce the trace.

GOVERNOR_GOLDEN=update rewrites the traces from the current code (review the diff)."""
from __future__ import annotations

import ast
import os
import pathlib
from typing import List, Tuple

import pytest

from tests.sim import patches
from tests.sim.world import Timing, Violation, World

SCENARIOS = sorted((pathlib.Path(__file__).parent / "sim" / "scenarios").glob("*.txt"))


def parse(path: pathlib.Path) -> Tuple[str, dict, List[tuple], Tuple[str, str], List[str]]:
    """(description, World arguments, faults, (the patch that undoes the fix, the invariant it then
    breaks), golden trace)."""
    head, _, trace = path.read_text().partition("\n----\n")
    description, args, faults, undo = [], {}, [], ("", "")
    for line in head.splitlines():
        if line.startswith("#"):
            description.append(line[1:].strip())
        elif line.startswith("fault "):
            when, kind, who, length = line.split()[1:]
            faults.append((float(when), kind, who, float(length)))
        elif line.startswith("expect "):
            args.setdefault("expect", []).append(tuple(line.split()[1:]))
        elif line.startswith("undo "):
            undo = (line.split()[1], line.split()[3])     # undo PATCH breaks INVARIANT
        elif line.strip():
            key, _, value = line.partition(":")
            args[key.strip()] = ast.literal_eval(value.strip())
            if key.strip() == "timing":
                args["timing"] = Timing(**args["timing"])
    return " ".join(description), args, faults, undo, trace.splitlines()


def run(args: dict, faults: List[tuple]) -> List[str]:
    world = World(faults=faults, **args)
    world.run()
    return [line.strip() for line in world.log]


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_the_scenario_gives_its_golden_trace(path):
    description, args, faults, _undo, golden = parse(path)
    trace = run(args, faults)
    if os.environ.get("GOVERNOR_GOLDEN") == "update":
        head = path.read_text().partition("\n----\n")[0]
        path.write_text(head + "\n----\n" + "\n".join(trace) + "\n")
        return
    assert trace == golden, f"{path.name} ({description}): the trace changed:\n" + "\n".join(trace)


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_the_scenario_fails_with_its_fix_undone(path):
    description, args, faults, (undo, invariant), _golden = parse(path)
    with pytest.MonkeyPatch.context() as mp:
        getattr(patches, undo)(mp)
        with pytest.raises(Violation, match=invariant):
            run(args, faults)
