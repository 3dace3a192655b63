import pytest
import torch

from zr_ablate.dropout import DropoutSpec
from zr_ablate.model.language_model import LSTMLanguageModel, count_parameters


@pytest.mark.parametrize("hidden,expected", [(200, 4_653_200), (650, 19_780_400), (1500, 66_034_000)])
def test_paper_parameter_counts(hidden, expected):
    model = LSTMLanguageModel(10_000, hidden, 2, DropoutSpec(), init_scale=0.05)
    assert count_parameters(model) == expected


def test_every_parameter_starts_uniform_in_minus_a_a():
    torch.manual_seed(0)
    model = LSTMLanguageModel(500, 32, 2, DropoutSpec(), init_scale=0.1)
    for name, p in model.named_parameters():
        assert p.abs().max() <= 0.1, name
        assert p.abs().max() > 0.09, name  # spread over the whole range, biases included
        assert abs(p.mean().item()) < 0.02, name


def test_tied_weights_share_the_embedding():
    model = LSTMLanguageModel(500, 32, 2, DropoutSpec(), init_scale=0.1, tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    assert count_parameters(model) == count_parameters(LSTMLanguageModel(500, 32, 2, DropoutSpec(), 0.1)) - 500 * 32


def test_forward_shapes():
    model = LSTMLanguageModel(500, 32, 2, DropoutSpec(), init_scale=0.1)
    tokens = torch.randint(0, 500, (7, 3))
    logits, (h, c) = model(tokens, model.init_state(3))
    assert logits.shape == (7, 3, 500) and h.shape == c.shape == (2, 3, 32)
