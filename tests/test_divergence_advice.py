"""The advice a diverged run gives, sentence by sentence, from its settings alone (steps/divergence.likely_cause):
the tests that train to a divergence (test_edges.py) see its start; these see all of it."""

from __future__ import annotations

import pytest

from softmax_lab.steps.divergence import likely_cause


def test_weight_decay_that_multiplies_the_weights_up_is_named_with_its_product_and_a_value_to_try():
    said = likely_cause({"lr": 0.5, "weight_decay": 4.0}, {}, before_any_step=False)
    assert said == ("Likely cause: weight decay. optimizer.weight_decay=4 x optimizer.lr=0.5 = 2 >= 2, so every "
                    "step multiplies the weights by |1 - lr x weight_decay| > 1. Try optimizer.weight_decay=0.02 or "
                    "smaller.")


@pytest.mark.parametrize(("lr", "wd"), [(0.5, 3.9), (0.1, 0.0), (None, 100.0)])
def test_weight_decay_below_the_edge_is_not_blamed(lr, wd):
    assert "weight decay" not in likely_cause({"lr": lr, "weight_decay": wd}, {}, before_any_step=False)


def test_a_loss_never_finite_names_its_own_options():
    said = likely_cause({"lr": 0.1}, {"margin": 1e38, "delta": 2, "on": "logits"}, before_any_step=True)
    assert said == ("Likely cause: the loss's own settings or the data, since it was not finite before the first "
                    "update (loss.margin=1e+38, loss.delta=2: try values near 1).")


def test_a_loss_without_options_says_the_settings_or_the_data():
    assert likely_cause({"lr": 0.1}, {"on": "logits"}, before_any_step=True) == (
        "Likely cause: the loss's own settings or the data, since it was not finite before the first update.")


def test_the_learning_rate_with_momentum():
    said = likely_cause({"lr": 2.0, "momentum": 0.9}, {}, before_any_step=False)
    assert said == ("Likely cause: the learning rate. Try a smaller learning rate than optimizer.lr=2 (or less "
                    "momentum than optimizer.momentum=0.9); each loss has its own stable range (docs/science.md).")


def test_the_learning_rate_without_a_value():
    assert likely_cause({}, {}, before_any_step=False) == (
        "Likely cause: the learning rate. Try a smaller learning rate; each loss has its own stable range "
        "(docs/science.md).")
