"""Fast checks of model.py, blocks.py and losses.py: shapes, parameters, heads, losses, .keras round trips."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from blocks import (
    Blur,
    FusedBatchNormalization,
    ResidualBlock,
    SpaceToDepth,
    StandardizedConv2D,
)
from losses import (
    balanced_mse,
    lds_age_weights,
    log_age_prior,
    loss_terms,
    ordinal_targets,
    rank_similarity,
    soft_age_labels,
)
from model import (
    HEADS,
    AgeCNN,
    CourseCNN,
    age_quantiles,
    ages_from_outputs,
    build_model,
    example_inputs,
    feature_map_table,
    format_feature_map_table,
    forward_flops,
    model_inputs,
    relu_straight_through,
)

MAX_AGE = 116  # The oldest age of UTKFace, which the data module defines.
# A small AgeCNN keeps every test well under a second on two CPU cores.
SMALL = {
    "image_size": 32,
    "widths": (8, 16),
    "blocks_per_stage": (1, 1),
    "stem_stride": 2,
    "head_units": 16,
    "dropout": 0.3,
    "max_age": MAX_AGE,
}
COURSE = {"image_size": 200}  # The course network's input.


@pytest.fixture(autouse=True)
def seed():
    """Make weights and random inputs the same on every run."""
    keras.utils.set_random_seed(0)


@pytest.fixture
def mixed_precision():
    """Switch to the mixed_float16 policy for one test and always switch back."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def random_images(batch_size, image_size):
    """Return random float32 images in [0, 1]."""
    return np.random.rand(batch_size, image_size, image_size, 3).astype("float32")


def test_course_cnn_matches_the_skeleton():
    model = build_model("course_cnn", **COURSE)
    assert model.count_params() == 307_185
    rows = feature_map_table(model)
    assert feature_map_table(model, (200, 200, 3)) == rows
    assert [(row.shape, row.parameters) for row in rows] == [
        ((200, 200, 3), 0),
        ((49, 49, 8), 608),
        ((12, 12, 16), 3_216),
        ((2304,), 0),
        ((2304,), 0),
        ((128,), 295_040),
        ((64,), 8_256),
        ((1,), 65),
    ]
    assert rows[0].name == "input" and rows[-1].name == "output"
    table = format_feature_map_table(rows)
    assert "| conv1 | 49 × 49 × 8 | 608 |" in table
    assert "**307,185**" in table
    ages = model.predict_on_batch(random_images(3, 200))
    assert ages.shape == (3, 1) and ages.dtype == np.float32
    assert np.all(ages >= 0)


def test_initial_age_sets_the_output_bias():
    model = build_model("course_cnn", initial_age=33.0, **COURSE)
    np.testing.assert_allclose(ops.convert_to_numpy(model.age_layer.bias), [33.0])
    # Zero images give zero hidden features (all hidden biases start at 0).
    zeros = np.zeros((2, 200, 200, 3), "float32")
    np.testing.assert_allclose(model.predict_on_batch(zeros), 33.0, rtol=1e-6)

    linear = build_model(
        "course_cnn", initial_age=-5.0, output_activation="linear", **COURSE
    )
    np.testing.assert_allclose(linear.predict_on_batch(zeros), -5.0, rtol=1e-6)
    relu = build_model("course_cnn", initial_age=-5.0, **COURSE)
    np.testing.assert_allclose(relu.predict_on_batch(zeros), 0.0)

    ours = build_model("age_cnn", initial_age=40.0, **SMALL)
    np.testing.assert_allclose(ops.convert_to_numpy(ours.head_layers[0].bias), [40.0])


@pytest.mark.parametrize("head", HEADS)
def test_age_cnn_heads(head):
    model = build_model("age_cnn", head=head, initial_age=30.0, **SMALL)
    outputs = model(random_images(4, 32))
    ages = ages_from_outputs(model, outputs)
    assert ages.shape == (4, 1) and ages.dtype == "float32"
    if head == "regression":
        assert not isinstance(outputs, dict)
    else:
        assert outputs["logits"].shape == (4, {"classification": 117}.get(head, 116))
        for method in ("mean", "median"):
            ages = ops.convert_to_numpy(ages_from_outputs(head, outputs, method))
            assert ages.shape == (4, 1)
            assert np.all((ages >= 0) & (ages <= MAX_AGE))
        # Every head starts near initial_age, so no head starts far from the data.
        np.testing.assert_allclose(ops.convert_to_numpy(outputs["age"]), 30.0, atol=3)
    labels = np.array([[1.0], [25.0], [60.0], [116.0]], "float32")
    for loss in ("l1", "huber", "l2"):
        terms = loss_terms(model, outputs, labels, loss=loss)
        assert np.isfinite(ops.convert_to_numpy(terms["total"]))


def largest_gradients(model, images, labels):
    """{weight path: its gradient's largest absolute value} for the Huber loss of a batch."""
    with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        total = loss_terms(model, outputs, labels, loss="huber")["total"]
    gradients = tape.gradient(total, model.trainable_weights)
    assert all(gradient is not None for gradient in gradients)
    return {
        weight.path: float(ops.max(ops.abs(gradient)))
        for weight, gradient in zip(model.trainable_weights, gradients)
    }


def starved_weights(model, largest):
    """The weights that every step's gradient must reach but did not: those of the first
    convolution, the hidden layer and every output layer. (A residual block's convolutions
    may get none at first by design: its last batch norm starts with gamma 0.)"""
    layers = [model.body[0], model.hidden, *model.head_layers]
    layers += [model.gender_layer] if model.gender_head else []
    paths = [weight.path for layer in layers for weight in layer.trainable_weights]
    return [path for path in paths if largest[path] == 0.0]


@pytest.mark.parametrize("head", HEADS)
def test_every_head_gets_gradients(head):
    model = build_model(
        "age_cnn", head=head, gender_head=True, initial_age=30.0, **SMALL
    )
    images = random_images(2, 32)
    assert np.all(ops.convert_to_numpy(ages_from_outputs(model, model(images))) > 0)
    # Both ages above the outputs: the errors, of one sign, cannot cancel in the bias.
    labels = {
        "age": np.array([[40.0], [70.0]], "float32"),
        "gender": np.array([1, -1], "int32"),
    }
    largest = largest_gradients(model, images, labels)
    assert starved_weights(model, largest) == [], largest


def test_the_gradient_check_fails_on_a_dead_output():
    # An output bias far below 0: every face is predicted 0. Through the plain ReLU no
    # gradient reaches any weight; through the straight-through one, the check passes.
    images, ages = random_images(2, 32), np.array([[40.0], [70.0]], "float32")
    for gradient in ("zero", "straight_through"):
        model = build_model(
            "age_cnn", initial_age=-1e3, relu_gradient=gradient, **SMALL
        )
        np.testing.assert_array_equal(model(images, training=True).numpy(), 0.0)
        largest = largest_gradients(model, images, ages)
        if gradient == "zero":
            assert set(largest.values()) == {0.0}
            assert len(starved_weights(model, largest)) == 5  # conv, hidden ×2, age ×2
        else:
            assert starved_weights(model, largest) == [], largest


def test_gender_loss_ignores_missing_labels():
    outputs = {
        "age": np.zeros((3, 1), "float32"),
        "gender_logit": np.array([[2.0], [-1.0], [50.0]], "float32"),
    }
    labels = {"age": np.zeros((3, 1), "float32"), "gender": np.array([1, 0, -1])}
    terms = loss_terms("regression", outputs, labels)
    # Only the first two images count: log(1 + e^-2) and log(1 + e^-1).
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2
    np.testing.assert_allclose(ops.convert_to_numpy(terms["gender"]), expected, 1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(terms["total"]), expected, 1e-5)
    labels["gender"] = np.array([-1, -1, -1])
    assert (
        float(ops.convert_to_numpy(loss_terms("regression", outputs, labels)["gender"]))
        == 0.0
    )


def test_ordinal_targets_and_ages():
    targets = ops.convert_to_numpy(
        ordinal_targets(np.array([[0.0], [3.0], [116.0]]), MAX_AGE)
    )
    assert targets.shape == (3, 116)
    assert targets.sum(axis=1).tolist() == [0, 3, 116]
    assert targets[1, :4].tolist() == [1, 1, 1, 0]
    # Confident logits that follow the targets decode back to the ages.
    ages = ages_from_outputs("ordinal", 20.0 * (targets - 0.5), "median")
    assert ops.convert_to_numpy(ages)[:, 0].tolist() == [0, 3, 116]


@pytest.mark.parametrize(
    "arch, options",
    [
        ("course_cnn", {"initial_age": 33.0, **COURSE}),
        ("age_cnn", {"initial_age": 33.0, **SMALL}),
        ("age_cnn", {"fused_batch_norm": True, **SMALL}),
        ("age_cnn", {"head": "ordinal", "gender_head": True, **SMALL}),
        ("age_cnn", {"distribution_head": True, **SMALL}),
        ("age_cnn", {"members": 2, "relu_gradient": "straight_through", **SMALL}),
        ("age_cnn", {"members": 2, "members_share": "stage1", **SMALL}),
        ("age_cnn", {"members": 2, "squeeze_excite": 4, **SMALL}),
        ("age_cnn", {"pooled_shortcut": True, **SMALL}),
        ("age_cnn", {"members": 2, "eca": 3, "blur": True, **SMALL}),
        ("age_cnn", {"members": 2, "activation": "silu", **SMALL}),
        ("age_cnn", {"pooling": "flatten", "members": 2, **SMALL}),
        ("age_cnn", {"stem": "space_to_depth", "members": 2, **SMALL}),
        ("age_cnn", {"unnormalized_parts": 2, "members": 2, **SMALL}),
        (
            "age_cnn",
            {"unnormalized_parts": 1, "standardized_kernels": True, "members": 2,
             **SMALL},
        ),  # fmt: skip
        (
            "age_cnn",
            {
                "head": "classification",
                "attribute_inputs": True,
                "head_units": 0,
                **SMALL,
            },
        ),
    ],
)
def test_keras_file_round_trip(tmp_path, arch, options):
    model = build_model(arch, **options)
    inputs = example_inputs(model, batch_size=3)
    images = random_images(3, model.image_size)
    if isinstance(inputs, dict):
        inputs = {
            "image": images,
            "gender": np.array([0, 1, -1]),
            "race": np.array([4, -1, 0]),
        }
    else:
        inputs = images
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    expected = keras.tree.map_structure(ops.convert_to_numpy, model(inputs))
    actual = keras.tree.map_structure(ops.convert_to_numpy, loaded(inputs))
    keras.tree.map_structure(np.testing.assert_array_equal, actual, expected)


@pytest.mark.parametrize(
    "policy, tolerance",
    [
        ("float32", 1e-5),
        ("mixed_bfloat16", 1e-2),
        ("mixed_float16", 2e-3),
    ],  # GPU's last
)
def test_fused_batch_norm_trains_as_keras_batch_norm(policy, tolerance):
    images = tf.random.stateless_normal((8, 12, 12, 16), seed=(1, 2)) * 3 + 1
    weights = tf.random.stateless_normal(images.shape, seed=(3, 4))  # a loss's weights
    plain = keras.layers.BatchNormalization(
        dtype=policy,
        gamma_initializer="random_uniform",
        beta_initializer="random_uniform",
    )
    fused = FusedBatchNormalization(dtype=policy)
    plain.build(images.shape), fused.build(images.shape)
    fused.set_weights(plain.get_weights())

    def step(layer):
        with tf.GradientTape() as tape:
            tape.watch(images)
            outputs = layer(images, training=True)
            loss = tf.reduce_sum(tf.cast(outputs, "float32") * weights)
        gradients = tape.gradient(loss, [images, *layer.trainable_variables])
        return outputs, gradients, [v.numpy() for v in layer.non_trainable_variables]

    (outputs, gradients, moving), (fused_outputs, fused_gradients, fused_moving) = map(
        step, (plain, fused)
    )
    assert fused_outputs.dtype == outputs.dtype
    np.testing.assert_allclose(_float(fused_outputs), _float(outputs), atol=tolerance)
    for found, expected in zip(fused_gradients, gradients):
        scale = float(tf.reduce_max(tf.abs(expected)))
        np.testing.assert_allclose(found, expected, atol=tolerance * scale)
    np.testing.assert_allclose(fused_moving[0], moving[0], atol=1e-6)  # the mean
    # The variance's moving average takes its batch value times n / (n − 1).
    n = 8 * 12 * 12
    np.testing.assert_allclose(
        fused_moving[1] - 0.99, (moving[1] - 0.99) * n / (n - 1), rtol=1e-4
    )
    # Inference is Keras's own.
    fused.set_weights(plain.get_weights())
    np.testing.assert_array_equal(_float(fused(images)), _float(plain(images)))


def _float(tensor):
    return tf.cast(tensor, "float32").numpy()


def test_mixed_precision_model_loads_in_float32(tmp_path, mixed_precision):
    images = random_images(3, 32)
    model = build_model("age_cnn", head="classification", gender_head=True, **SMALL)
    assert model.body[0].compute_dtype == "float16"
    outputs = model(images)
    assert all(value.dtype == "float32" for value in outputs.values())
    model.save(tmp_path / "mixed.keras")
    keras.mixed_precision.set_global_policy("float32")
    loaded = keras.models.load_model(tmp_path / "mixed.keras")
    assert loaded.body[0].compute_dtype == "float32"
    reloaded = loaded(images)
    for key, value in outputs.items():
        assert reloaded[key].dtype == "float32"
        np.testing.assert_allclose(
            ops.convert_to_numpy(reloaded[key]),
            ops.convert_to_numpy(value),
            rtol=1e-2,
            atol=0.05,
        )


def test_course_cnn_costs_what_its_layers_say():
    # Course CNN: 2 × (608 − 8) × 49² + 2 × (3,216 − 16) × 12² + the dense layers.
    assert forward_flops(build_model("course_cnn", **COURSE)) == 4_409_136


def test_the_sizes_are_the_callers():
    model = build_model("age_cnn", **{**SMALL, "image_size": 48, "widths": (8, 12)})
    assert model.image_size == 48 and example_inputs(model).shape == (1, 48, 48, 3)
    assert feature_map_table(model)[-4].shape == (12,)  # The pooled features.
    with pytest.raises(TypeError):
        AgeCNN(widths=(8,), blocks_per_stage=(1,))  # No size of its own.
    with pytest.raises(ValueError, match="max_age"):
        AgeCNN(**{**SMALL, "max_age": None}, head="ordinal")


def test_model_inputs_add_unknown_attributes():
    images = random_images(2, 32)
    plain = build_model("age_cnn", **SMALL)
    assert model_inputs(plain, images) is images
    model = build_model("age_cnn", attribute_inputs=True, **SMALL)
    unknown = model_inputs(model, images)
    assert ops.convert_to_numpy(unknown["gender"]).tolist() == [-1, -1]
    labels = {"gender": np.array([0, 1]), "race": np.array([2, 3])}
    assert model_inputs(model, images, labels)["race"] is labels["race"]


def test_feature_map_table_lists_every_block():
    model = build_model("age_cnn", head="ordinal", attribute_inputs=True, **SMALL)
    names = [row.name for row in feature_map_table(model)]
    assert names[:4] == ["input", "stem_conv", "stem_norm", "stem_relu"]
    assert "stage1_block1" in names and "stage2_block1" in names
    assert names[-3:] == ["age_score", "age_thresholds", "age"]
    shapes = dict((row.name, row.shape) for row in feature_map_table(model))
    assert shapes["stage2_block1"] == (4, 4, 16)
    assert shapes["with_attributes"] == (16 + 8,)


def test_a_flattened_map_gives_the_head_every_position():
    # SMALL: 32 px, halved by the stem and each of two stages, a 4 x 4 map of 16 channels.
    flat = build_model("age_cnn", pooling="flatten", members=2, **SMALL)
    shapes = dict((row.name, row.shape) for row in feature_map_table(flat))
    assert shapes["member1/pool"] == (4 * 4 * 16,)
    averaged = build_model("age_cnn", members=2, **SMALL)
    shapes = dict((row.name, row.shape) for row in feature_map_table(averaged))
    assert shapes["member1/pool"] == (16,)
    # The average cannot tell a map from the map turned half a turn; the flattened can.
    features = np.random.default_rng(0).normal(size=(1, 4, 4, 16)).astype("float32")
    turned = features[:, ::-1, ::-1]
    for model, tells in ((flat, True), (averaged, False)):
        pool = model.member_networks[0].body[-1]
        differ = not np.allclose(
            ops.convert_to_numpy(pool(features)), ops.convert_to_numpy(pool(turned))
        )
        assert differ == tells
    with pytest.raises(ValueError, match="pooling"):
        AgeCNN(**SMALL, pooling="max")


def test_attribute_inputs_accept_a_dict():
    model = build_model("age_cnn", attribute_inputs=True, initial_age=30.0, **SMALL)
    images = random_images(3, 32)
    known = model(
        {"image": images, "gender": np.array([0, 1, 1]), "race": np.array([0, 2, 4])}
    )
    unknown = model(
        {"image": images, "gender": -np.ones(3, "int32"), "race": -np.ones(3, "int32")}
    )
    assert known.shape == (3, 1)
    assert not np.allclose(ops.convert_to_numpy(known), ops.convert_to_numpy(unknown))


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError):
        build_model("resnet")
    with pytest.raises(ValueError):
        AgeCNN(**SMALL, head="softmax")
    with pytest.raises(ValueError):
        CourseCNN(**COURSE, output_activation="sigmoid")
    with pytest.raises(ValueError):
        AgeCNN(**SMALL, gender_head=True, attribute_inputs=True)


def test_the_distribution_head_teaches_in_training_only():
    model = build_model("age_cnn", distribution_head=True, initial_age=30.0, **SMALL)
    images = random_images(4, 32)
    assert model(images).shape == (4, 1)  # The age, through the ReLU output.
    outputs = model(images, training=True)
    assert outputs["distribution_logits"].shape == (4, MAX_AGE + 1)
    labels = np.array([[1.0], [25.0], [60.0], [116.0]], "float32")
    terms = loss_terms(model, outputs, labels)
    total = terms["age"] + terms["distribution"]
    np.testing.assert_allclose(ops.convert_to_numpy(terms["total"]), total, rtol=1e-6)
    names = [row.name for row in feature_map_table(model)]
    assert "age_distribution" in names  # Its parameters count in the table.
    with pytest.raises(ValueError, match="regression head only"):
        AgeCNN(**SMALL, head="ordinal", distribution_head=True)


def test_soft_age_labels_are_gaussians_around_the_age():
    labels = ops.convert_to_numpy(soft_age_labels(np.array([[0.0], [30.0]]), 117, 2.0))
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-6)
    assert labels.argmax(axis=1).tolist() == [0, 30]
    np.testing.assert_allclose(labels[1, 28] / labels[1, 30], np.exp(-0.5), rtol=1e-5)


def test_age_quantiles_of_a_known_distribution():
    probabilities = np.zeros((2, 117), np.float32)
    probabilities[0, 10:18] = 0.125  # ages 10..17 alike
    probabilities[1, 40] = 1.0  # certain: 40
    logits = np.log(np.maximum(probabilities, 1e-30))
    found = ops.convert_to_numpy(age_quantiles(logits, [0.05, 0.3, 0.55, 0.8, 0.95]))
    # The first age whose cumulative probability (0.125 more per age) reaches q.
    assert found.tolist() == [[10, 12, 14, 16, 17], [40, 40, 40, 40, 40]]
    # The median is the same rule at q = 1/2.
    median = ages_from_outputs("classification", logits, method="median")
    assert (
        ops.convert_to_numpy(median).tolist()
        == ops.convert_to_numpy(age_quantiles(logits, [0.5])).tolist()
    )


def test_the_straight_through_relu_outputs_max_0_z_and_passes_every_gradient():
    z = tf.constant([-3.0, -0.5, 0.0, 2.5])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        through, plain = relu_straight_through(z), tf.nn.relu(z)
    np.testing.assert_array_equal(through.numpy(), plain.numpy())  # exactly max(0, z)
    np.testing.assert_array_equal(tape.gradient(through, z).numpy(), [1, 1, 1, 1])
    np.testing.assert_array_equal(tape.gradient(plain, z).numpy(), [0, 0, 0, 1])


@pytest.mark.parametrize("arch, options", [("course_cnn", COURSE), ("age_cnn", SMALL)])
def test_a_face_predicted_0_still_pulls_its_output_up(arch, options, tmp_path):
    # An output bias far below 0: every face is predicted 0. With the plain ReLU no face
    # moves the bias; with the straight-through gradient, the L1 loss pulls it up.
    images = random_images(4, options["image_size"])
    ages = tf.fill((4, 1), 30.0)
    pulls = {}
    for gradient in ("zero", "straight_through"):
        model = build_model(arch, initial_age=-50.0, relu_gradient=gradient, **options)
        bias = model.trainable_variables[-1]
        with tf.GradientTape() as tape:
            predicted = model(images, training=True)
            loss = loss_terms(model, predicted, ages)["total"]
        np.testing.assert_array_equal(predicted.numpy(), 0.0)
        pulls[gradient] = float(tape.gradient(loss, bias)[0])
    assert pulls["zero"] == 0.0 and pulls["straight_through"] < 0  # descent raises it
    # Saved and loaded, the model still outputs max(0, z).
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.relu_gradient == "straight_through"
    np.testing.assert_array_equal(loaded(images).numpy(), 0.0)


def _balanced_gradient(predicted, age, log_prior):
    """d(Balanced MSE)/d(output) of one face."""
    output = tf.Variable([[predicted]])
    with tf.GradientTape() as tape:
        loss = balanced_mse(output, tf.constant([[age]]), log_prior)
    return float(tape.gradient(loss, output)[0, 0])


def test_balanced_mse_pushes_rare_ages_away_from_the_common_ones():
    flat = log_age_prior([], MAX_AGE)  # every age as common
    assert flat.shape == (MAX_AGE + 1,) and np.exp(flat).sum() == pytest.approx(1.0)
    # Under a flat prior the term is the squared error (plus a constant): gradient 2·error.
    assert _balanced_gradient(50.0, 40.0, flat) == pytest.approx(20.0, abs=0.01)
    assert _balanced_gradient(50.0, 50.0, flat) == pytest.approx(0.0, abs=0.01)
    # Training ages around 30 (sd 15 years): an 80-year-old face predicted exactly is
    # pushed further up (a negative gradient), a 30-year-old one hardly moves.
    counts = 2000 * np.exp(-((np.arange(MAX_AGE + 1) - 30) ** 2) / (2 * 15**2))
    skewed = log_age_prior(
        np.repeat(np.arange(MAX_AGE + 1), counts.astype(int)), MAX_AGE
    )
    assert np.isfinite(skewed).all() and np.exp(skewed).sum() == pytest.approx(1.0)
    assert _balanced_gradient(80.0, 80.0, skewed) < -2.0
    assert abs(_balanced_gradient(30.0, 30.0, skewed)) < 0.5
    # Still a loss: too high a prediction is pulled down.
    assert _balanced_gradient(95.0, 80.0, skewed) > 0


def _arc(ages):
    """Features on a quarter circle, their angle growing with the age: the cosine
    similarity of two faces falls as their ages part."""
    angles = np.asarray(ages, "float32") / 128 * np.pi / 2
    return np.stack([np.cos(angles), np.sin(angles)], -1).astype("float32")


def test_rank_similarity_is_zero_for_features_in_age_order_and_counts_one_face_an_age():
    # Powers of two: from any face, the other ages are at distinct distances (no ties).
    ages = np.array([[1], [2], [4], [8], [16], [32], [64], [128]], "float32")
    assert float(rank_similarity(_arc(ages[:, 0]), ages)) == 0.0
    shuffled = _arc(ages[::-1, 0])  # the oldest face looks the youngest, and so on
    assert float(rank_similarity(shuffled, ages)) > 0.05
    # A second face of an age already in the batch takes no part, whatever its features.
    noisy = np.random.default_rng(0).normal(size=(3, 2)).astype("float32")
    more = np.concatenate([ages, [[4], [64], [1]]]).astype("float32")
    for features in (_arc(ages[:, 0]), shuffled):
        with_copies = np.concatenate([features, noisy])
        assert float(rank_similarity(with_copies, more)) == pytest.approx(
            float(rank_similarity(features, ages))
        )


def test_rank_similarity_descended_orders_the_features_by_age():
    rng = np.random.default_rng(1)
    ages = tf.constant(rng.permutation(60)[:32, None] * 2, "float32")  # distinct
    features = tf.Variable(rng.normal(size=(32, 8)).astype("float32"))
    copy = tf.Variable(tf.ones((1, 8)))  # a second face of the first face's age
    with tf.GradientTape() as tape:
        start = 100.0 * rank_similarity(
            tf.concat([features, copy], 0), tf.concat([ages, ages[:1]], 0)
        )
    gradient, copied = tape.gradient(start, [features, copy])
    assert float(tf.reduce_max(tf.abs(gradient))) > 0  # the ranking's gradient flows
    assert not np.any(copied.numpy())  # and skips the face that took no part
    optimizer = keras.optimizers.SGD(0.2)
    for _ in range(40):
        with tf.GradientTape() as tape:
            term = 100.0 * rank_similarity(features, ages)
        optimizer.apply([tape.gradient(term, features)], [features])
    assert float(rank_similarity(features, ages)) < 0.5 * float(start) / 100.0


def test_squeeze_excitation_gates_each_channel_of_the_block_before_the_skip():
    block = ResidualBlock(16, strides=2, projection=True, squeeze_excite=4)
    images = tf.constant(random_images(2, 8))
    block(images, training=False)
    assert block.squeeze.units == 4 and block.excite.units == 16
    # Its own FLOPs: two small dense layers an image, beside the same block without them.
    plain = build_model("age_cnn", **SMALL)
    gated = build_model("age_cnn", **SMALL, squeeze_excite=4)
    extra = sum(2 * (w * max(w // 4, 4)) for w in SMALL["widths"])  # the kernels' MACs
    assert forward_flops(gated) - forward_flops(plain) == 2 * extra
    # Zero gamma starts the residual branch at 0, so: the branch given weight, a gate
    # shut (sigmoid far below 0) leaves the shortcut alone, and an open one the plain sum.
    block.norm2.gamma.assign(tf.ones_like(block.norm2.gamma))
    shortcut = ops.relu(block.shortcut_norm(block.shortcut_conv(images)))
    block.excite.bias.assign(tf.fill([16], -50.0))
    np.testing.assert_allclose(block(images), shortcut, atol=1e-6)
    block.excite.bias.assign(tf.fill([16], 50.0))
    branch = block.norm2(block.conv2(ops.relu(block.norm1(block.conv1(images)))))
    open_gate = ops.relu(branch + block.shortcut_norm(block.shortcut_conv(images)))
    np.testing.assert_allclose(block(images), open_gate, atol=1e-5)
    assert not np.allclose(open_gate, shortcut, atol=1e-3)


def built_block_pair(images, **options):
    """A block that halves the resolution with `options`, and the plain one, each built
    on `images`: [the block with them, the plain block]."""
    pair = [ResidualBlock(16, strides=2, projection=True, **o) for o in (options, {})]
    for block in pair:
        block(images, training=False)
    return pair


def test_a_pooled_shortcut_reads_the_averages_of_2x2_squares():
    images = random_images(2, 8)
    pooled, plain = built_block_pair(images, pooled_shortcut=True)
    kernel = pooled.shortcut_conv.kernel.numpy()[0, 0]  # (3, 16)
    plain.shortcut_conv.kernel.assign(pooled.shortcut_conv.kernel)
    # A fresh block is its shortcut alone (the residual branch's last gamma is 0), and a
    # fresh batch norm in inference scales by 1 / sqrt(1 + epsilon).
    scale = 1 / np.sqrt(1 + pooled.shortcut_norm.epsilon)
    squares = images.reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(
        pooled(images), np.maximum(squares @ kernel * scale, 0), atol=1e-5
    )
    every_other = images[:, ::2, ::2]  # the strided 1x1 convolution's pixels
    np.testing.assert_allclose(
        plain(images), np.maximum(every_other @ kernel * scale, 0), atol=1e-5
    )
    # The same weights either way, and blocks that keep the resolution pool nothing.
    assert len(pooled.weights) == len(plain.weights)
    assert (
        ResidualBlock(16, projection=True, pooled_shortcut=True).shortcut_pool is None
    )


def test_eca_gates_each_channel_by_a_convolution_over_the_channels_means():
    images = random_images(2, 8)
    block = ResidualBlock(16, strides=2, projection=True, eca=3)
    block(images, training=False)
    assert block.gate.kernel.shape == (3, 1, 1)  # K weights, shared by the channels
    block.norm2.gamma.assign(tf.ones_like(block.norm2.gamma))  # the branch counts
    shortcut = block.shortcut_norm(block.shortcut_conv(images))
    branch = block.norm2(block.conv2(ops.relu(block.norm1(block.conv1(images)))))
    branch = np.asarray(branch)
    # The gate of channel c: sigmoid(w0 · mean[c - 1] + w1 · mean[c] + w2 · mean[c + 1]),
    # zeros past the first and the last channel.
    weights = np.array([0.5, -1.0, 2.0], "float32")
    block.gate.kernel.assign(weights.reshape(3, 1, 1))
    means = np.pad(branch.mean(axis=(1, 2)), [(0, 0), (1, 1)])
    gates = 1 / (1 + np.exp(-(means[:, :-2] * 0.5 - means[:, 1:-1] + 2 * means[:, 2:])))
    expected = np.maximum(branch * gates[:, None, None, :] + shortcut, 0)
    np.testing.assert_allclose(block(images), expected, atol=1e-5)
    with pytest.raises(ValueError, match="squeeze_excite or eca"):
        ResidualBlock(16, squeeze_excite=4, eca=3)


def test_every_layer_of_blocks_is_registered_for_saved_models():
    import blocks

    classes = [
        value
        for value in vars(blocks).values()
        if isinstance(value, type)
        and issubclass(value, keras.layers.Layer)
        and value.__module__ == "blocks"
    ]
    assert {"Blur", "ResidualBlock", "OrdinalThresholds"} <= {
        c.__name__ for c in classes
    }
    for layer_class in classes:
        name = f"age_regression>{layer_class.__name__}"
        assert keras.saving.get_registered_object(name) is layer_class


def test_blur_is_a_1_2_1_filter_that_keeps_flat_images_flat():
    impulse = np.zeros((1, 5, 5, 1), "float32")
    impulse[0, 2, 2, 0] = 16.0
    row = np.array([1.0, 2.0, 1.0])
    expected = np.zeros((5, 5))
    expected[1:4, 1:4] = np.outer(row, row)
    np.testing.assert_allclose(Blur()(impulse)[0, ..., 0], expected, atol=1e-6)
    flat = np.full((2, 6, 6, 3), 0.7, "float32")  # mirrored edges: nothing leaks in
    np.testing.assert_allclose(Blur()(flat), flat, atol=1e-6)


def test_a_blurred_block_reads_its_input_blurred_where_it_halves_the_resolution():
    images = random_images(2, 8)
    blurred, plain = built_block_pair(images, blur=True)
    plain.set_weights(blurred.get_weights())  # a Blur has no weights
    np.testing.assert_allclose(blurred(images), plain(Blur()(images)), atol=1e-6)
    assert not np.allclose(blurred(images), plain(images), atol=1e-3)
    # A block that keeps the resolution has nothing to alias.
    assert ResidualBlock(16, blur=True).blur_layer is None
    # The stem of a blurred network blurs the image before its strided convolution.
    model = build_model("age_cnn", **SMALL, blur=True)
    assert isinstance(model.body[0], Blur) and model.body[1].name == "stem_conv"


def test_space_to_depth_stacks_each_2x2_square_as_one_pixel():
    images = np.arange(2 * 4 * 6 * 3, dtype="float32").reshape(2, 4, 6, 3)
    stacked = ops.convert_to_numpy(SpaceToDepth()(images))
    assert stacked.shape == (2, 2, 3, 12)
    # The square's rows, then its columns, then the channels: TensorFlow's op's order.
    np.testing.assert_array_equal(stacked, tf.nn.space_to_depth(images, 2).numpy())
    for row, column in ((0, 0), (1, 2)):
        square = images[:, 2 * row : 2 * row + 2, 2 * column : 2 * column + 2]
        np.testing.assert_array_equal(stacked[:, row, column], square.reshape(2, 12))
    assert SpaceToDepth().compute_output_shape((None, 96, 96, 3)) == (None, 48, 48, 12)


def test_a_stem_of_squares_gives_stage1_on_the_maps_of_the_convolution_stem():
    squares = build_model("age_cnn", stem="space_to_depth", members=2, **SMALL)
    plain = build_model("age_cnn", members=2, **SMALL)
    shapes = [
        dict((r.name, r.shape) for r in feature_map_table(m)) for m in (squares, plain)
    ]
    # SMALL: 32 px; the stem of squares reads 16 x 16 squares of 12 values at stride 2.
    assert shapes[0]["member1/stem_squares"] == (16, 16, 12)
    assert shapes[0]["member1/stem_conv"] == (8, 8, 8)
    assert shapes[1]["member1/stem_conv"] == (16, 16, 8)
    for name in ("member1/stage1_block1", "member1/stage2_block1", "age"):
        assert shapes[0][name] == shapes[1][name]
    # Stage 1 keeps the stem's resolution and channels: no projection on its shortcut.
    stage1 = squares.member_networks[1].body[4]
    assert stage1.name == "stage1_block1" and stage1.strides == 1
    assert not stage1.projection
    assert squares.get_config()["stem"] == "space_to_depth"
    assert plain.get_config()["stem"] == "conv"
    with pytest.raises(ValueError, match="stem"):
        AgeCNN(**SMALL, stem="patches")


def test_a_block_without_batch_norm_takes_biases_and_starts_as_the_identity():
    images = random_images(2, 8) - 0.5  # Some below 0, which the block's ReLU zeroes.
    block = ResidualBlock(3, normalized=False)  # As many channels as the images.
    block(images, training=True)
    names = sorted(variable.path.split("/", 1)[1] for variable in block.weights)
    assert names == ["conv1/bias", "conv1/kernel", "conv2/bias", "conv2/kernel"]
    assert block.norm1 is None and block.norm2 is None
    # The second convolution starts at zero: the block is relu(its input).
    for training in (True, False):
        np.testing.assert_allclose(
            ops.convert_to_numpy(block(images, training=training)),
            np.maximum(images, 0.0),
        )
    halving = ResidualBlock(4, strides=2, projection=True, normalized=False)
    halving(images)
    assert halving.shortcut_norm is None and halving.shortcut_conv.use_bias
    assert ResidualBlock.from_config(block.get_config()).normalized is False


def test_unnormalized_parts_take_batch_norm_from_the_first_parts():
    def norms(model):
        """The parts (stem, stage1, ...) of member 1 that hold a batch norm."""
        parts = {
            variable.path.split("/")[2].split("_")[0]
            for variable in model.weights
            if "norm" in variable.path.split("/")[-2] and "member1/" in variable.path
        }
        return sorted(parts)

    for count, normalized in ((0, ["stage1", "stage2", "stem"]), (1, ["stage1", "stage2"]),
                              (2, ["stage2"]), (3, [])):  # fmt: skip
        model = build_model("age_cnn", unnormalized_parts=count, members=2, **SMALL)
        assert norms(model) == normalized, count
        assert model.get_config()["unnormalized_parts"] == count
        stem = model.member_networks[0].body[0]
        assert stem.name == "stem_conv" and stem.use_bias == (count > 0)
    with pytest.raises(ValueError, match="unnormalized_parts must be from 0 to 3"):
        AgeCNN(**SMALL, unnormalized_parts=4)


def test_a_standardized_kernel_gives_the_same_output_at_any_scale_and_offset():
    images = np.random.randn(2, 8, 8, 4).astype("float32")
    convolution = StandardizedConv2D(5, 3, padding="same")
    before = ops.convert_to_numpy(convolution(images))
    # An input of variance 1 gives an output of variance about 1 (a mean of 25 samples).
    assert 0.5 < before.std() < 1.5
    kernel = ops.convert_to_numpy(convolution.kernel)
    offsets = np.arange(5, dtype="float32")  # One for every output channel.
    convolution.kernel.assign(7.0 * kernel + offsets)
    # The same but for the small constant added to the variance.
    np.testing.assert_allclose(
        ops.convert_to_numpy(convolution(images)), before, rtol=1e-3, atol=1e-3
    )
    scaled = ops.convert_to_numpy(convolution(images))
    convolution.gain.assign(np.full(5, 2.0, "float32"))
    np.testing.assert_allclose(
        ops.convert_to_numpy(convolution(images)) - scaled,
        scaled - ops.convert_to_numpy(convolution.bias),
        rtol=1e-4,
        atol=1e-4,
    )


def test_a_standardized_block_starts_as_the_identity_and_its_gains_are_saved(tmp_path):
    images = random_images(2, 8) - 0.5
    block = ResidualBlock(3, normalized=False, standardized=True)
    np.testing.assert_allclose(
        ops.convert_to_numpy(block(images, training=True)), np.maximum(images, 0.0)
    )
    assert isinstance(block.conv2, StandardizedConv2D)
    assert np.abs(ops.convert_to_numpy(block.conv2.kernel)).max() > 0
    with pytest.raises(ValueError, match="without batch norm"):
        ResidualBlock(3, standardized=True)
    model = build_model(
        "age_cnn", unnormalized_parts=2, standardized_kernels=True, **SMALL
    )
    gains = [v for v in model.weights if v.path.endswith("gain")]
    # The stem's and stage 1's three convolutions, and stage 1's block.
    assert len(gains) == 5
    for variable in gains:
        variable.assign(np.asarray(np.random.rand(*variable.shape) + 0.5, "float32"))
    images = random_images(3, model.image_size)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0),
                               model.predict(images, verbose=0), rtol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="unnormalized_parts 1 or more"):
        AgeCNN(**SMALL, standardized_kernels=True)


@pytest.mark.parametrize("name", ["silu", "hard_silu"])
def test_a_smooth_network_has_its_activation_wherever_a_relu_network_has_relu(name):
    images = random_images(2, 8)
    smooth, plain = built_block_pair(images, activation=name)
    plain.set_weights(smooth.get_weights())
    for block in (smooth, plain):  # the residual branch counts
        block.norm2.gamma.assign(tf.ones_like(block.norm2.gamma))
    shortcut = smooth.shortcut_norm(smooth.shortcut_conv(images))
    for block, activate in ((smooth, getattr(ops, name)), (plain, ops.relu)):
        branch = block.norm2(block.conv2(activate(block.norm1(block.conv1(images)))))
        expected = activate(branch + shortcut)
        np.testing.assert_allclose(block(images), expected, atol=1e-5)
    assert np.min(smooth(images)) < 0 <= np.min(plain(images))  # both dip below 0
    # The stem and the head's hidden layer too; the age output keeps its ReLU.
    model = build_model("age_cnn", **SMALL, activation=name)
    assert model.body[2].name == "stem_activation"
    assert model.body[2].activation is keras.activations.get(name)
    assert model.hidden.activation is keras.activations.get(name)
    assert all(block.activation == name for block in model.body[3:-1])
    assert float(ops.min(model(images))) >= 0
    with pytest.raises(ValueError, match="activation"):
        build_model("age_cnn", **SMALL, activation="tanh")
    with pytest.raises(ValueError, match="activation must be one of"):
        ResidualBlock(16, activation="tanh")


def test_lds_weights_favour_rare_ages_and_average_1():
    # Many faces at 25, a few at 80: an 80-year-old face weighs more, and the weights
    # average 1 over the faces, so the loss keeps its scale.
    ages = [25] * 400 + [26] * 300 + [80] * 4
    weights = lds_age_weights(ages, MAX_AGE)
    assert weights.shape == (MAX_AGE + 1,) and weights.dtype == np.float32
    assert weights[80] > 5 * weights[25]
    assert np.mean(weights[ages]) == pytest.approx(1.0)
    assert np.isfinite(weights).all() and (weights > 0).all()
    # The loss weighs each image's error by the weight of its age.
    predicted, true = tf.constant([[20.0], [70.0]]), tf.constant([[25.0], [80.0]])
    weighted = loss_terms("regression", predicted, true, age_weights=weights)["total"]
    expected = (5 * weights[25] + 10 * weights[80]) / 2
    assert float(weighted) == pytest.approx(expected, rel=1e-6)


def assert_age_is_the_relu_of_the_members_mean(model, images, members_input):
    """The model's age for images is the ReLU of the mean of its members' outputs on
    members_input (the images, or the output of the layers they share)."""
    before_relu = np.concatenate(
        [
            ops.convert_to_numpy(member(members_input))
            for member in model.member_networks
        ],
        -1,
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(model(images)),
        np.maximum(before_relu.mean(-1, keepdims=True), 0.0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_members_are_held_to_the_ages_alone_and_averaged_before_the_relu():
    model = build_model("age_cnn", members=3, initial_age=30.0, **SMALL)
    images = random_images(4, 32)
    ages = np.array([[1.0], [25.0], [60.0], [90.0]], "float32")
    # Each member starts from its own weights.
    first, second = (member.get_weights()[0] for member in model.member_networks[:2])
    assert not np.allclose(first, second)
    outputs = model(images, training=True)  # each member's own age while training
    assert outputs.shape == (4, 3)
    # The loss is the mean of the members' own losses, the Balanced MSE term's as well.
    prior = log_age_prior(np.random.randint(0, 80, 500), MAX_AGE)
    terms = loss_terms(model, outputs, ages, balanced_mse_weight=0.5, age_prior=prior)
    alone = [
        loss_terms(
            model, outputs[:, m : m + 1], ages, balanced_mse_weight=0.5, age_prior=prior
        )
        for m in range(3)
    ]
    for name in ("age", "balanced_mse", "total"):
        expected = np.mean([float(terms_of_one[name]) for terms_of_one in alone])
        assert float(terms[name]) == pytest.approx(expected, rel=1e-5)
    # Inference: one age, the ReLU of the members' mean output (their own heads are
    # linear, so below 0 the mean is cut at 0 once).
    assert_age_is_the_relu_of_the_members_mean(model, images, images)
    # Task 1's table lists the first member's layers, then the others, alike, a row
    # each; three networks of this shape cost three times one network's FLOPs.
    one = build_model("age_cnn", **SMALL)
    rows = feature_map_table(model)
    one_rows = feature_map_table(one)
    assert [row.name for row in rows] == [
        "input",
        *(f"member1/{row.name}" for row in one_rows[1:]),
        "member2",
        "member3",
        "mean",
        "age",
    ]
    assert rows[-4].parameters == one.count_params()
    assert sum(row.parameters for row in rows) == model.count_params()
    assert model.count_params() == 3 * one.count_params()
    assert forward_flops(model) == 3 * forward_flops(one) > 0
    # Every member's output gets its gradients from the loss.
    with tf.GradientTape() as tape:
        loss = loss_terms(model, model(images, training=True), ages + 50.0)["total"]
    gradients = tape.gradient(loss, model.trainable_variables)
    outputs = [
        gradient
        for gradient, variable in zip(gradients, model.trainable_variables)
        if variable.path.endswith("age/bias")
    ]
    assert len(outputs) == 3 and all(float(g[0]) < 0 for g in outputs)


def test_members_share_their_first_layers_and_keep_the_rest_their_own():
    model = build_model(
        "age_cnn", members=3, members_share="stage1", initial_age=30.0, **SMALL
    )
    images = random_images(4, 32)
    # The stem and the first stage once, then each member's second stage and head.
    assert [layer.name for layer in model.shared_body] == [
        "stem_conv",
        "stem_norm",
        "stem_relu",
        "stage1_block1",
    ]
    for member in model.member_networks:
        assert [layer.name for layer in member.body] == ["stage2_block1", "pool"]
    shared = images
    for layer in model.shared_body:
        shared = layer(shared)
    assert_age_is_the_relu_of_the_members_mean(model, images, shared)
    assert model(images, training=True).shape == (4, 3)
    # The shared layers' weights are counted once, in the table as in the model.
    one = build_model("age_cnn", **SMALL)
    shared_parameters = sum(layer.count_params() for layer in model.shared_body)
    assert 0 < shared_parameters < one.count_params()
    assert model.count_params() == shared_parameters + 3 * (
        one.count_params() - shared_parameters
    )
    rows = feature_map_table(model)
    assert [row.name for row in rows[:6]] == [
        "input",
        "stem_conv",
        "stem_norm",
        "stem_relu",
        "stage1_block1",
        "member1/stage2_block1",
    ]
    assert sum(row.parameters for row in rows) == model.count_params()
    # Sharing the stem saves two of the three stem convolutions: 3 × 3 × 3 inputs to
    # 8 channels at 16 × 16 positions, a multiply-add 2 FLOPs.
    separate = build_model("age_cnn", members=3, **SMALL)
    stem = build_model("age_cnn", members=3, members_share="stem", **SMALL)
    assert forward_flops(separate) - forward_flops(stem) == 2 * (2 * 27 * 8 * 16 * 16)
    assert forward_flops(separate) > forward_flops(stem) > forward_flops(model)
    # The shared stem learns from every member's loss.
    ages = np.array([[1.0], [25.0], [60.0], [90.0]], "float32")
    with tf.GradientTape(persistent=True) as tape:
        outputs = model(images, training=True)
        losses = [
            loss_terms(model, outputs[:, m : m + 1], ages)["total"] for m in range(3)
        ]
    kernel = model.shared_body[0].kernel
    for m in range(3):
        assert np.abs(ops.convert_to_numpy(tape.gradient(losses[m], kernel))).sum() > 0
    with tf.GradientTape() as tape:
        alone = loss_terms(model, model(images, training=True)[:, :1], ages)["total"]
    # (At the start each block's residual branch is off, its last gamma 0: the
    # shortcut's convolution learns.)
    kernels = [member.body[0].shortcut_conv.kernel for member in model.member_networks]
    gradients = [
        np.abs(ops.convert_to_numpy(g)).sum() for g in tape.gradient(alone, kernels)
    ]
    assert gradients[0] > 0 and gradients[1] == gradients[2] == 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"members": 1, "members_share": "stem"}, "several members"),
        ({"members": 2, "members_share": "stage2"}, "no stage of their own"),
        ({"members": 2, "members_share": "stage9"}, "members_share"),
    ],
)
def test_members_share_only_what_leaves_each_its_own_layers(options, message):
    with pytest.raises(ValueError, match=message):
        AgeCNN(**{**SMALL, **options})


def test_members_refuse_what_they_cannot_average():
    for options in (
        {"head": "classification"},
        {"gender_head": True},
        {"distribution_head": True},
        {"members": 0},
    ):
        with pytest.raises(ValueError, match="members"):
            AgeCNN(**{**SMALL, "members": 2, **options})
