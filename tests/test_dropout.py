import pytest
from hydra import compose, initialize_config_dir

import zr_ablate.schema  # noqa: F401  registers the config schema that zr_ablate/conf/config.yaml starts from
from zr_ablate.dropout import Connection, DropoutSpec
from zr_ablate.schema import CONF_DIR


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, "0.5"])
def test_probability_outside_0_1_is_rejected(p):
    with pytest.raises(ValueError, match="probability must be in \\[0, 1\\)"):
        Connection(p)


def test_unknown_mask_kind_and_connection_are_rejected():
    with pytest.raises(ValueError, match="mask must be one of"):
        Connection(0.5, "per-batch")
    with pytest.raises(ValueError, match="unknown dropout connection.*'cell'"):
        DropoutSpec.from_dict({"name": "x", "cell": {"p": 0.1}})
    with pytest.raises(ValueError, match="dropout.output has unknown key"):
        DropoutSpec.from_dict({"output": {"prob": 0.1}})


def compose_spec(*overrides) -> DropoutSpec:
    from omegaconf import OmegaConf

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return DropoutSpec.from_dict(OmegaConf.to_container(cfg.dropout, resolve=True))


def test_presets_take_probability_from_model_size_unless_overridden():
    assert compose_spec("dropout=zaremba", "model=medium").embedding.p == 0.5
    assert compose_spec("dropout=zaremba", "model=large").output.p == 0.65
    s = compose_spec("dropout=variational", "model=large", "dropout.p=0.3", "dropout.recurrent.p=0.2")
    assert (s.embedding.p, s.between.p, s.recurrent.p, s.output.p) == (0.3, 0.3, 0.2, 0.3)


@pytest.mark.parametrize(
    "name,recurrent,mask",
    [("none", 0.0, "step"), ("naive", 0.5, "step"), ("zaremba", 0.0, "step"), ("variational", 0.5, "sequence")],
)
def test_preset_files_fill_the_spec(name, recurrent, mask):
    s = compose_spec(f"dropout={name}", "model=medium")
    assert s.name == name and s.recurrent.p == recurrent
    assert s.needs_step_loop == (recurrent > 0)
    if name != "none":
        assert {s.embedding.mask, s.between.mask, s.output.mask} == {mask}


def test_bad_probability_in_config_is_an_error():
    with pytest.raises(ValueError, match="dropout.recurrent: dropout probability"):
        compose_spec("dropout=naive", "dropout.recurrent.p=1.0")


def test_changed_settings_leave_out_what_cannot_change_the_numbers():
    from zr_ablate.records import changed_settings

    old = {
        "seed": 1,
        "threads": 2,
        "model": {"hidden": 650, "lstm_impl": "auto"},
        "logger": {"mode": "offline"},
        "data": {"dir": "/a", "bptt": 35},
        "gone": 1,
    }
    new = {
        "seed": 1,
        "threads": 4,
        "model": {"hidden": 200, "lstm_impl": "loop", "loop_kernel": "triton"},
        "logger": {"mode": "online", "project": "x"},
        "data": {"dir": "/b", "bptt": 20},
        "cuda_graph": "step",
    }
    assert changed_settings(old, new) == ["data.bptt: 35 -> 20", "model.hidden: 650 -> 200"]
    assert changed_settings({}, new) == []  # a job with no record yet


def test_gates_must_be_tied_or_untied_and_untied_only_where_a_connection_feeds_the_gates():
    with pytest.raises(ValueError, match="gates must be one of"):
        Connection(0.5, "sequence", "per-gate")
    with pytest.raises(ValueError, match="dropout.output.gates=untied: only embedding, between, recurrent"):
        DropoutSpec(output=Connection(0.5, "sequence", "untied"))
    spec = compose_spec("dropout=gal", "model=medium")
    assert spec.needs_step_loop and spec.recurrent.untied and not spec.output.untied
    # untied embedding alone (no recurrent mask) also needs the loop: the fused kernel takes one input
    assert DropoutSpec(embedding=Connection(0.5, "sequence", "untied")).needs_step_loop
