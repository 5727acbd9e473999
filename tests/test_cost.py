"""Issue 17: a cost model that cannot be fooled, and faults that belong to whoever caused them."""

from __future__ import annotations

import json

import pytest

from autograder.verifier import budget as budget_module
from autograder.verifier import retrain
from autograder.verifier.budget import Budget, check, model_cost, recipe_cost
from autograder.verifier.rebuild import RefusedModel

MNIST = {"num_classes": 10, "name": "MNIST", "train_size": 60000}


def _conv(filters, **kw):
    return {"type": "Conv2D", "filters": filters, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same",
            "dilation_rate": [1, 1], "activation": "relu", "use_bias": True, **kw}


def _head():
    return [{"type": "GlobalMaxPooling2D", "keepdims": False},
            {"type": "Dense", "units": 10, "activation": "softmax", "use_bias": True}]


def _plan(model, epochs=15, batch_size=64):
    return {"model": model, "fits": [{"epochs": epochs, "batch_size": batch_size, "validation_split": 0.0,
                                      "steps_per_epoch": None, "callbacks": []}]}


def test_pooling_windows_are_counted_and_the_pooling_attack_is_refused():
    """Four 28x28 stride-1 'same' max-poolings on a 256-channel 28x28 map, 15 epochs at batch 64: 14,070 steps,
    1.4% of the limit when pooling cost nothing; about 19 h per run measured.  The static model refuses it."""
    pool = {"type": "MaxPooling2D", "pool_size": [28, 28], "strides": [1, 1], "padding": "same"}
    model = {"input_shape": [28, 28, 1], "layers": [_conv(256), pool, pool, pool, pool, *_head()]}
    recipe = _plan(model)
    cost, _, _ = recipe_cost(recipe, Budget(), MNIST)
    assert cost.steps == 14_070
    assert cost.macs_per_image >= 4 * 28 * 28 * 256 * 28 * 28  # every output value reads its 28x28 window
    with pytest.raises(RefusedModel, match="pooling windows") as err:
        check(cost, recipe, Budget(), 3)
    assert "operations" in str(err.value) and "4e+13" in str(err.value)


def test_a_layer_without_a_rule_gets_the_generic_per_value_cost_and_keras_shape():
    """A type added to the whitelist later (augmentation, noise, resizing) is costed without a rule of its own."""
    base = {"input_shape": [28, 28, 1], "layers": [_conv(8), *_head()]}
    plain = model_cost(base, 10)[1]
    for extra, shape in [({"type": "GaussianNoise", "stddev": 0.1}, (28, 28, 8)),
                         ({"type": "RandomRotation", "factor": 0.1}, (28, 28, 8)),
                         ({"type": "UpSampling2D", "size": [4, 4]}, (112, 112, 8))]:
        model = {"input_shape": [28, 28, 1], "layers": [_conv(8), extra, *_head()]}
        params, ops, acts = model_cost(model, 10)
        values_in, values_out = 28 * 28 * 8, shape[0] * shape[1] * shape[2]
        assert ops - plain >= budget_module.GENERIC_OPS_PER_VALUE * (values_in + values_out), extra["type"]
        assert acts >= values_out + 10, extra["type"]  # the shape came from Keras, not assumed unchanged


def test_every_allowed_layer_costs_something():
    """Normalisation, dropout, global pooling and activations count; none is free."""
    base = {"input_shape": [28, 28, 1], "layers": [_conv(8), *_head()]}
    plain = model_cost(base, 10)[1]
    for extra in [{"type": "BatchNormalization", "axis": -1, "momentum": 0.99, "epsilon": 1e-3, "center": True,
                   "scale": True},
                  {"type": "Dropout", "rate": 0.5}, {"type": "SpatialDropout2D", "rate": 0.5},
                  {"type": "Activation", "activation": "gelu"}, {"type": "LeakyReLU", "negative_slope": 0.1},
                  {"type": "AveragePooling2D", "pool_size": [3, 3], "strides": [1, 1], "padding": "same"}]:
        model = {"input_shape": [28, 28, 1], "layers": [_conv(8), extra, *_head()]}
        assert model_cost(model, 10)[1] > plain, extra["type"]


def test_the_lessons_recipe_stays_well_inside_the_limit():
    import keras
    from keras import layers

    from autograder.verifier.rebuild import canonical_model

    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"), layers.Flatten(),
        layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax"),
    ])
    canonical, _ = canonical_model(json.loads(model.to_json()))
    cost, _, _ = recipe_cost(_plan(canonical, 15, 32), Budget(), MNIST)
    assert cost.training_macs < Budget().max_macs / 4
