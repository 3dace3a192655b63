"""The search space of the Optuna sweeper (optuna_sweeper.py) and the tuned rates it leaves behind.

- search_space: Hydra's sweep grammar -> Optuna distributions. interval(a, b) a float in [a, b];
  range(a, b, step) the values Hydra's range lists (b excluded); choice(x, y, ...) one of them; anything
  else is passed to every trial as is.
- space_size, grid, rates: how many points a stepped space holds, each of them, and a trial's point
  compared across trials (floats without their binary tails).
- bounds: two jobs at the ends of the range, for the sweep guard to check before any trial trains.
- tuned_rate: ${zr_tuned:dropout.p}, the best trial's value for the tuned=<placement> presets.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser


def clean(value):
    """A suggested float without its binary tail (0.15000000000000002 -> 0.15), for folder names and configs."""
    return round(value, 10) if isinstance(value, float) else value


def search_space(arguments: list[str]) -> tuple[dict, list[str]]:
    """Override strings -> ({key: Optuna distribution}, [fixed overrides])."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space, fixed = {}, []
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_interval_sweep():
            value = override.value()
            space[key] = FloatDistribution(float(value.start), float(value.end), log="log" in value.tags)
        elif override.is_range_sweep():
            values = [clean(v) for v in override.sweep_iterator()]
            step = clean(override.value().step)
            space[key] = FloatDistribution(float(values[0]), float(values[-1]), step=float(step))
        elif override.is_choice_sweep():
            space[key] = CategoricalDistribution(list(override.sweep_iterator()))
        else:
            fixed.append(override.input_line)
    return space, fixed


def space_size(space: dict) -> float:
    """How many distinct points a search space holds: inf unless every key is stepped or a choice."""
    size = 1
    for d in space.values():
        if hasattr(d, "choices"):
            size *= len(d.choices)
        elif getattr(d, "step", None) is None:
            return math.inf
        else:
            size *= round((d.high - d.low) / d.step) + 1
    return size


def grid(space: dict) -> list[dict]:
    """Every point of a finite space (stepped ranges and choices), as trial params."""
    values = {
        k: list(d.choices) if hasattr(d, "choices") else [clean(d.low + i * d.step) for i in range(space_size({k: d}))]
        for k, d in space.items()
    }
    return [dict(zip(values, point)) for point in itertools.product(*values.values())]


def rates(params: dict) -> tuple:
    """A trial's point in the space, comparable across trials (floats without their binary tails)."""
    return tuple(sorted((k, clean(v)) for k, v in params.items()))


def bounds(params: dict, arguments: list[str]) -> list[list[str]]:
    """Two jobs that stand for a search's range, every searched key at its low and then at its high value:
    what the sweep guard checks before any trial trains."""
    from optuna.distributions import CategoricalDistribution

    space, fixed = search_space([f"{k}={v}" for k, v in params.items()] + list(arguments))
    ends = {
        k: (d.choices[0], d.choices[-1]) if isinstance(d, CategoricalDistribution) else (d.low, d.high)
        for k, d in space.items()
    }
    return [fixed + [f"{k}={clean(v[i])}" for k, v in ends.items()] for i in (0, 1)]


def tuned_rate(key: str, _root_) -> float:
    """${zr_tuned:dropout.p}: `key`'s value in the best trial of this config's study (study.storage,
    study.name), for the tuned=<placement> presets. No study or no completed trial: one line naming the search."""
    import optuna

    storage, name = _root_.study.storage, _root_.study.name
    search = f"python run.py -m hparams_search={_root_.dropout.name} model={_root_.model.name}"
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        raise ValueError(f"no study {name}: {storage} does not exist; run its search first ({search})")
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError as e:
        raise ValueError(f"no study {name} in {storage}; run its search first ({search})") from e
    try:
        best = study.best_trial
    except ValueError as e:
        raise ValueError(f"the study {name} ({storage}) has no completed trial; run its search ({search})") from e
    if key not in best.params:
        raise ValueError(f"the study {name} did not search {key} (it searched {', '.join(best.params)})")
    return clean(best.params[key])


def register_resolvers() -> None:
    """zr_tuned, for the tuned=<placement> presets; before Hydra composes (experiment.build does it on import)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("zr_tuned", tuned_rate, replace=True)
