"""Published recipes: a config follows one only when every setting of it matches; only then does the report
set that recipe's published number beside the run."""

import math

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import zr_ablate.schema  # noqa: F401  registers the config schema that zr_ablate/conf/config.yaml starts from
from tests.conftest import REPO
from zr_ablate.analysis.published import beside, mc_beside
from zr_ablate.analysis.recipes import markdown, match, recipes
from zr_ablate.records import flat
from zr_ablate.schema import CONF_DIR


def config(*overrides) -> dict:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return flat(OmegaConf.to_container(cfg, resolve=True))


@pytest.mark.parametrize(
    "overrides,recipe",
    [(r["command"].split(), rid) for rid, r in recipes().items()]
    # Settings that cannot change the numbers are not part of a recipe.
    + [(["paper=medium", "seed=3", "model.lstm_impl=loop", "threads=1", "logger.mode=disabled"], "zaremba_medium")],
)
def test_each_recipes_command_follows_that_recipe_exactly(overrides, recipe):
    assert match(config(*overrides)) == (recipe, recipes()[recipe]["name"])


@pytest.mark.parametrize(
    "overrides,differs",
    [
        (["model=tiny", "model.name=medium", "dropout=zaremba"], "model.hidden"),  # a tiny run claiming medium
        (["paper=medium", "trainer.max_epochs=38"], "trainer.max_epochs"),
        (["paper=medium", "dropout.p=0.4"], "dropout.embedding.p"),
        (["paper=medium", "dropout.output.mask=sequence"], "dropout.output.mask"),
        (["paper=medium", "data.train_tokens=100000"], "data.train_tokens"),
        (["paper=medium", "data.test_protocol=fast"], "data.test_protocol"),
        (["paper=medium", "dropout=variational"], "dropout.recurrent.p"),  # p=0.5 everywhere is not Gal's recipe
        (["paper=gal_large", "optim.weight_decay=0"], "optim.weight_decay"),
        (["paper=gal_large", "dropout.recurrent.gates=tied"], "dropout.recurrent.gates"),
        (["paper=gal_large", "optim.decay_after=15"], "optim.decay_after"),
        # Table 1 was trained with word dropout per token (the July 2016 code); the presets drop per type.
        (["paper=gal_medium"], "dropout.word.mask"),
        (["paper=gal_large_tied"], "dropout.word.mask"),
    ],
)
def test_any_changed_setting_follows_no_recipe_and_the_note_names_it(overrides, differs):
    recipe, note = match(config(*overrides))
    assert recipe is None
    assert note.startswith("no published run with this recipe; nearest: ") and differs in note


def test_gal_presets_carry_gals_rates_weight_decay_and_decay_start():
    large = config("paper=gal_large")
    rates = {c: large[f"dropout.{c}.p"] for c in ("word", "embedding", "between", "recurrent", "output")}
    assert rates == {"word": 0.3, "embedding": 0.5, "between": 0.5, "recurrent": 0.3, "output": 0.5}
    assert {large[f"dropout.{c}.gates"] for c in ("embedding", "between", "recurrent")} == {"untied"}
    assert {large[f"dropout.{c}.mask"] for c in rates} == {"sequence"}
    assert (large["optim.weight_decay"], large["optim.decay_after"], large["optim.lr_decay"]) == (1e-7, 11, 1.15)
    assert (large["model.hidden"], large["optim.clip"], large["trainer.max_epochs"]) == (1500, 10.0, 55)
    medium = config("paper=gal_medium")
    rates = [medium[f"dropout.{c}.p"] for c in ("word", "embedding", "between", "recurrent", "output")]
    assert rates == [0.2, 0.35, 0.35, 0.2, 0.35]
    assert (medium["optim.weight_decay"], medium["optim.decay_after"], medium["model.hidden"]) == (1e-7, 7, 650)
    assert config("paper=gal_medium_tied")["dropout.recurrent.gates"] == "tied"


def cells(*configs: tuple[str, str, list[str]]) -> pd.DataFrame:
    rows = []
    for size, placement, overrides in configs:
        recipe, note = match(config(*overrides))
        rows.append({"size": size, "placement": placement, "recipe": recipe, "recipe_note": note})
    return pd.DataFrame(rows)


def test_published_numbers_stand_only_beside_a_recipe_match():
    got = beside(
        cells(
            ("medium", "zaremba", ["paper=medium"]),
            ("medium", "zaremba", ["model=tiny", "model.name=medium", "dropout=zaremba"]),
            ("medium", "gal", ["paper=gal_medium", "dropout.word.mask=step"]),
            ("medium", "semeniuta", ["paper=medium", "dropout=semeniuta"]),
            ("small", "none", ["paper=small", "optim.decay_after=4"]),
        )
    )
    assert got["published_test_ppl"].tolist()[0] == 82.7 and got["published_val_ppl"].tolist()[0] == 86.2
    assert got["published_source"][0].startswith("Zaremba 2014")
    assert math.isnan(got["published_test_ppl"][1]) and math.isnan(got["published_val_ppl"][1])
    assert got["published_source"][1].startswith("no published run with this recipe; nearest: Zaremba et al. 2014")
    assert got["published_test_ppl"][2] == 79.7 and "Variational (untied weights)" in got["published_source"][2]
    assert "[word dropout per token, as the July 2016 code drew it]" in got["published_source"][2]
    schedule = "model.init_scale, optim.decay_after, optim.clip, trainer.max_epochs, optim.weight_decay"
    assert f"recipe assumes {schedule}" in got["published_source"][2]
    assert math.isnan(got["published_test_ppl"][3])
    assert "published under another training recipe: Wen et al. 2018 Flipout Table 3" in got["published_source"][3]
    assert got["published_test_ppl"][4] == 115.91 and got["published_source"][4].startswith("TensorFlow")
    table1 = [
        (size, name, [f"paper={paper}", "dropout.word.mask=step"])
        for size, name, paper in [
            ("medium", "gal", "gal_medium"),
            ("medium", "gal_tied", "gal_medium_tied"),
            ("large", "gal", "gal_large"),
            ("large", "gal_tied", "gal_large_tied"),
        ]
    ]
    mc = mc_beside(cells(*table1, ("large", "gal", ["paper=gal_large"])).assign(mc_samples_min=1000))
    assert mc["published_mc_test_ppl"].tolist()[:4] == [78.6, 79.0, 73.4, 74.1]  # Table 1, tied rows too
    assert mc["published_mc_samples"].tolist() == [1000] * 4 + [2000]
    assert math.isnan(mc["published_mc_test_ppl"][4])  # the 2017 re-run's 73.319 averaged 2000 samples
    assert mc["published_mc_source"][4].endswith("averaged 2000 samples per token, these runs 1000 (1000 fewer)")


def test_gals_january_2017_rerun_is_its_own_recipe():
    """Gal's README re-ran the large untied model with word dropout per type: that is what paper=gal_large
    runs, so its numbers (not Table 1's, made with word dropout per token) stand beside it."""
    got = beside(
        cells(("large", "gal", ["paper=gal_large"]), ("large", "gal", ["paper=gal_large", "dropout.word.mask=step"]))
    )
    assert got["published_test_ppl"].tolist() == [75.112, 75.2]
    assert got["published_val_ppl"].tolist() == [77.457, 77.9]
    assert "Update 4 (January 2017)" in got["published_source"][0]


def test_methods_page_lists_every_recipe_as_the_data_says():
    """docs/methods-and-recipes.md's Recipes table is `python -m zr_ablate.analysis.recipes`: regenerate it
    when published_recipes.yaml changes."""
    assert markdown() in (REPO / "docs" / "methods-and-recipes.md").read_text()
