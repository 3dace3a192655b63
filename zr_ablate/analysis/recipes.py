"""Published training recipes, and which one (if any) a run's config follows.

published_recipes.yaml holds each recipe behind a row of published_ptb.csv (its `recipe` column) as the
settings of our config that reproduce it. A run follows a recipe when its config equals the recipe on every
key of RECIPE_KEYS: the model's size and init, the unroll and batch, every dropout rate with its mask kind
and gates (for the connections that are on), the optimiser (lr, decay, decay start, clip, weight decay),
the epochs, the embedding tying, the test protocol, and no cut to the data or to the batches per epoch.
Seeds, the LSTM implementation, threads, W&B settings and the like are not part of a recipe.

The report sets a published number beside a run only when the run follows that number's recipe; otherwise it
says which recipe is nearest and what differs (`match`). Torch-free, for the results and report modules.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from importlib.resources import files

import yaml
from omegaconf import OmegaConf

from zr_ablate.dropout import CONNECTIONS
from zr_ablate.records import flat
from zr_ablate.schema import Config

SHOWN_DIFFERENCES = 4  # keys named in a "nearest recipe" note before "+N more"


@functools.cache
def _data() -> dict:
    with files(__package__).joinpath("published_recipes.yaml").open() as f:
        return yaml.safe_load(f)


def _dropout(settings: dict) -> dict:
    """The dropout part of a recipe from flat settings: per connection, p and, where p > 0, the mask kind
    and gates; a connection that is off is only p = 0 (its mask kind does not change the run)."""
    out = {}
    for c in CONNECTIONS:
        p = settings.get(f"dropout.{c}.p") or 0.0  # a string (an unresolved interpolation) matches no recipe
        out[f"dropout.{c}.p"] = p
        if not isinstance(p, (int, float)) or p > 0:
            out[f"dropout.{c}.mask"] = settings.get(f"dropout.{c}.mask")
            out[f"dropout.{c}.gates"] = settings.get(f"dropout.{c}.gates") or "tied"
    return out


@functools.cache
def _resolved(rid: str) -> tuple[dict, dict]:
    """A recipe's (non-dropout settings, dropout settings), flat: the defaults, then the recipe it extends,
    then its own. A recipe that names any dropout gives its whole dropout; one that names none keeps its
    base's."""
    spec = _data()["recipes"][rid]
    plain, dropout = _resolved(spec["extends"]) if "extends" in spec else (_data()["defaults"], {})
    own = flat(spec.get("settings", {}))
    own_dropout = {k: v for k, v in own.items() if k.startswith("dropout.")}
    return plain | {k: v for k, v in own.items() if k not in own_dropout}, own_dropout or dropout


@functools.cache
def recipes() -> dict[str, dict]:
    """Recipe id -> {"name", "command", "source", "assumed": [keys], "settings": {key: value}}, every setting
    spelled out, in the file's order."""
    out = {}
    for rid, spec in _data()["recipes"].items():
        plain, dropout = _resolved(rid)
        settings = dict(plain) | _dropout(dropout)
        out[rid] = {
            "name": spec["name"],
            "command": spec["command"],
            "source": spec["source"],
            "assumed": spec.get("assumed", []),
            "settings": settings,
        }
    return out


RECIPE_KEYS = list(_data()["defaults"])  # the non-dropout keys; the dropout ones come from _dropout


@functools.cache
def _schema_defaults() -> dict:
    """Today's default of every key, for records written before a key existed (weight_decay, gates)."""
    config = OmegaConf.to_container(OmegaConf.structured(Config), throw_on_missing=False)
    return {k: (None if v == "???" else v) for k, v in flat(config).items()}


def settings_of(config: dict) -> dict:
    """A run's recipe settings from its flat config ({"optim.lr": 1.0, ...})."""
    full = _schema_defaults() | config
    return {k: full.get(k) for k in RECIPE_KEYS} | _dropout(full)


def setup(config: dict) -> str:
    """A short digest of a run's recipe settings other than its dropout: runs that share it follow the same
    recipe but for where dropout goes, so the report may pair their placements (analysis/compare.py)."""
    settings = settings_of(config)
    plain = json.dumps({k: settings[k] for k in RECIPE_KEYS}, sort_keys=True, default=str)
    return hashlib.sha1(plain.encode()).hexdigest()[:8]


def _equal(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


def differences(run: dict, recipe: dict) -> list[str]:
    """The keys where two sets of recipe settings differ (a key one side lacks counts as a difference)."""
    return [k for k in dict.fromkeys([*run, *recipe]) if not _equal(run.get(k), recipe.get(k))]


def match(config: dict) -> tuple[str | None, str]:
    """(id of the recipe a run's flat config follows, or None; a note): the note names the recipe, or the
    nearest one and what differs from it."""
    run = settings_of(config)
    diffs = {rid: differences(run, r["settings"]) for rid, r in recipes().items()}
    nearest = min(diffs, key=lambda rid: len(diffs[rid]))  # the first listed on a tie
    if not diffs[nearest]:
        return nearest, recipes()[nearest]["name"]
    shown = diffs[nearest][:SHOWN_DIFFERENCES]
    more = len(diffs[nearest]) - len(shown)
    return None, (
        f"no published run with this recipe; nearest: {recipes()[nearest]['name']} (differs in: "
        f"{', '.join(shown)}{f', +{more} more' if more else ''})"
    )


def _rates(settings: dict) -> str:
    """The dropout of a recipe in one cell: "embedding 0.5 step, ..." (untied gates marked), or none."""
    on = [c for c in CONNECTIONS if (settings[f"dropout.{c}.p"] or 0) > 0]
    return (
        ", ".join(
            f"{c} {settings[f'dropout.{c}.p']:g} {settings[f'dropout.{c}.mask']}"
            + (" untied" if settings[f"dropout.{c}.gates"] == "untied" else "")
            for c in on
        )
        or "none"
    )


def markdown() -> str:
    """The Recipes table of docs/methods-and-recipes.md: every published recipe with its command and every
    setting, then where each recipe's settings come from (a list: a source is too long for a table cell)."""
    lines = [
        "| recipe | command | hidden | init | unroll | epochs | lr schedule | clip | weight decay | tied emb. "
        "| dropout |",
        "|" + " --- |" * 11,
    ]
    sources = []
    for r in recipes().values():
        s = r["settings"]
        assumed = f" Assumed: {', '.join(r['assumed'])}." if r["assumed"] else ""
        lines.append(
            f"| {r['name']} | `{r['command']}` | {s['model.hidden']} | {s['model.init_scale']:g} | {s['data.bptt']} "
            f"| {s['trainer.max_epochs']} | {s['optim.lr']:g}, /{s['optim.lr_decay']:g} per epoch from the end of "
            f"epoch {s['optim.decay_after']} | {s['optim.clip']:g} | {s['optim.weight_decay']:g} "
            f"| {'yes' if s['model.tie_weights'] else 'no'} | {_rates(s)} |"
        )
        sources.append(f"- {r['name']}: {r['source']}.{assumed}")
    return "\n".join([*lines, "", "Sources:", "", *sources])


if __name__ == "__main__":
    print(markdown())
