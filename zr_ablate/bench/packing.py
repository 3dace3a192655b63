"""Packing in a budgeted run's plan: jobs of one shape trained together as one packed model in one process
(hydra/launcher=packed), where that measured faster than separate processes. Pure: numbers in, a plan out.

    the_plan = choose(work, 1800, sharing, packing=Sharing({1: 1.0, 4: 0.62}), overrides=...)

A packed group is a run unit of its own: M jobs with equal pack keys (equal settings but dropout and seed,
the same epoch to resume from), each training at packing.factor(M) x its speed alone (the measured packed
aggregate / M; 1/M, no gain, where M was not measured). It completes when its members do (a member that
diverges is frozen and the others go on), so the plan treats it as one job of the members' length at that
rate. Groups run one after another (a group alongside other processes was not measured), or `at_once`.

The group is launched as `python run.py -m <overrides> hydra/launcher=packed`, and a Hydra sweep is the
product of its lists: so a group is only ever a product of its members' differing overrides (dropout=a,b
seed=1 is one; {dropout=a seed=1, dropout=b seed=2} is two), and its command gives exactly its jobs
(`sweep_overrides`). Groups grow along one override at a time, in the plan's order: four placements x three
seeds at M=4 make three groups of the four placements, one per seed.

Of the options (no packing at 1..N processes at once, as plan.plan picks it; groups of every measured M; or
the M given), the plan that completes the most jobs, then trains the most epochs, then ends soonest is taken;
on a tie, fewer packed. So packing is chosen only where it measured faster.
"""

from __future__ import annotations

import re
from dataclasses import replace
from itertools import product

from zr_ablate.bench.plan import Plan, Sharing, Work, plan, score

PLAIN = re.compile(r"[\w.+\-/:@]+")  # a value a sweep list can hold as it is (no comma, quote or bracket)


def plain(override: str) -> bool:
    return bool(PLAIN.fullmatch(override.split("=", 1)[-1]))


def product_groups(names: list[str], overrides: dict[str, dict[str, str]], most: int) -> list[list[str]]:
    """`names` (jobs of one pack key, in order) in groups of at most `most` whose overrides ({key: the override
    as written}) are a product of lists: from the first job left, add the next value of one key while every combination
    is a job left and the group stays within `most` (one key as far as it goes, then the next)."""
    left, groups = list(names), []
    while left:
        index = {frozenset(overrides[n].items()): n for n in left}
        values = {k: [v] for k, v in overrides[left[0]].items()}

        def members(trial: dict) -> list[str] | None:
            keys = list(trial)
            found = [index.get(frozenset(zip(keys, combo))) for combo in product(*trial.values())]
            return None if None in found else found

        for key in list(values):  # one key at a time, as far as it goes, in the order of the overrides
            for v in dict.fromkeys(overrides[n].get(key) for n in left):
                if v is None or v in values[key] or not (plain(v) and plain(values[key][0])):
                    continue
                trial = dict(values, **{key: [*values[key], v]})
                if len(list(product(*trial.values()))) <= most and members(trial):
                    values = trial
        group = sorted(members(values), key=left.index)
        groups.append(group)
        left = [n for n in left if n not in group]
    return groups


def sweep_overrides(overrides: list[dict[str, str]]) -> list[str]:
    """The run.py -m overrides that sweep exactly these jobs (a product_groups group; each {key: the override
    as written}): each key once, its values as a list where they differ."""
    swept = []
    for key in dict.fromkeys(k for job in overrides for k in job):
        written = list(dict.fromkeys(job[key] for job in overrides))
        swept.append(written[0] if len(written) == 1 else f"{key}={','.join(w.split('=', 1)[1] for w in written)}")
    return swept


def group_work(members: list[Work], rate: float) -> Work:
    """A packed group as one unit: its members' length (the slowest's epoch and test) at `rate` x alone; the
    process starts once."""
    first = members[0]
    return replace(
        first,
        name=" + ".join(w.name for w in members),
        epoch_s=max(w.epoch_s for w in members) / rate,
        test_s=max(w.test_s for w in members) / rate,
        start_s=max(w.start_s for w in members),
    )


def packed_plan(
    work: list[Work], most: int, overrides: dict, packing: Sharing, sharing: Sharing, available_s: float, at_once: int,
    margin: float, partial: bool,
) -> Plan:  # fmt: skip
    """The plan with the jobs packed in groups of at most `most`, `at_once` units (processes) at a time."""
    ordered = sorted(work, key=lambda w: not w.resumed)
    by_name, units, groups, seen = {w.name: w for w in ordered}, [], {}, set()
    for w in ordered:
        if w.name in seen:
            continue
        if w.pack_key is None:
            units.append(w)
            seen.add(w.name)
            continue
        same = [n for n in by_name if by_name[n].pack_key == w.pack_key and n not in seen]
        for names in product_groups(same, overrides, most):
            members = [by_name[n] for n in names]
            unit = group_work(members, packing.factor(len(members))) if len(members) > 1 else members[0]
            units.append(unit)
            seen.update(names)
            if len(members) > 1:
                groups[unit.name] = names
    unit_plan = plan(units, available_s, sharing, at_once, margin, partial)
    members = {u.name: groups.get(u.name, [u.name]) for u in unit_plan.units}
    outcomes = {n: replace(unit_plan.outcomes[u]) for u in members for n in members[u]}
    return Plan(
        at_once=at_once,
        available_s=available_s,
        order=[n for u in members for n in members[u]],
        outcomes=outcomes,
        seconds_alone={n: by_name[n].seconds for n in outcomes},
        units=unit_plan.units,
        pack=most,
        groups=groups,
    )


def choose(
    work: list[Work],
    available_s: float,
    sharing: Sharing,
    packing: Sharing,
    overrides: dict[str, dict[str, str]],
    at_once: int | None = None,
    pack: int | None = None,
    margin: float = 1.1,
    partial: bool = True,
) -> Plan:
    """The best plan among processes (plan.plan) and groups of every measured M (`pack`: None auto; 1 no
    packing; M groups of at most M). `overrides`: each job's override {key: value}."""
    sizes = [pack] if pack else [1, *sorted(m for m in packing.levels if m > 1)]
    best, best_score = None, None
    for m in sizes:
        if m == 1:
            candidate = plan(work, available_s, sharing, at_once, margin, partial)
        else:
            candidate = packed_plan(work, m, overrides, packing, sharing, available_s, at_once or 1, margin, partial)
        if best is None or score(candidate.outcomes) > best_score:  # strictly better: a tie keeps fewer packed
            best, best_score = candidate, score(candidate.outcomes)
    return best
