"""The training losses of the age networks: each head's age term, the Balanced MSE term
against the training ages' prior, the LDS weights, the teacher's soft labels and the
gender term, combined by `loss_terms` into the loss that the train step minimises.

Usage:

    from losses import log_age_prior, loss_terms

    prior = log_age_prior(training_ages, max_age=116)
    terms = loss_terms(model, model(images, training=True), labels,
                       balanced_mse_weight=0.05, age_prior=prior)
    terms["total"]  # the scalar to differentiate

They take a model's outputs as model.py describes them: ages (batch, 1), (batch, members)
for an AgeCNN of several members while training, or a dict with "age", "logits",
"gender_logit" and "distribution_logits".
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from model import HEADS, _check_choice, ages_from_outputs

# The regression losses of --loss.
LOSSES = ("l1", "huber", "l2")
HUBER_DELTA = 5.0  # Years: errors below this are squared, larger ones count linearly.


def ordinal_targets(ages, max_age):
    """Encode ages (batch, 1) as CORAL's targets age > k: (batch, max_age) float32."""
    thresholds = ops.arange(max_age, dtype="float32")  # (max_age,)
    return ops.cast(ops.cast(ages, "float32") > thresholds, "float32")


def soft_age_labels(ages, num_classes, sigma):
    """Gaussian label distributions over the ages 0..num_classes-1: (batch, num_classes)."""
    classes = ops.arange(num_classes, dtype="float32")  # (num_classes,)
    weights = ops.exp(-0.5 * ((classes - ops.cast(ages, "float32")) / sigma) ** 2)
    return weights / ops.sum(weights, axis=-1, keepdims=True)


def _age_losses(head, outputs, ages, loss):
    """The age term of the loss of a head for each image (batch,), from ages (batch, 1)."""
    if head == "regression":
        # (batch, 1), or (batch, members) of an AgeCNN's members while training: each
        # loss below is then the mean of the members' losses.
        predicted = ops.cast(outputs["age"], "float32")
        if loss == "l1":
            return keras.losses.mean_absolute_error(ages, predicted)
        if loss == "l2":
            return keras.losses.mean_squared_error(ages, predicted)
        return keras.losses.huber(ages, predicted, delta=HUBER_DELTA)
    logits = ops.cast(outputs["logits"], "float32")
    if head == "classification":
        max_age = ops.shape(logits)[-1] - 1
        classes = ops.cast(ops.round(ops.clip(ages[:, 0], 0, max_age)), "int32")
        return keras.losses.sparse_categorical_crossentropy(
            classes, logits, from_logits=True
        )
    # CORAL sums the binary cross-entropies of the max_age thresholds.
    per_threshold = ops.binary_crossentropy(
        ordinal_targets(ages, ops.shape(logits)[-1]), logits, from_logits=True
    )  # (batch, max_age)
    return ops.sum(per_threshold, axis=-1)


def lds_age_weights(ages, max_age, kernel_size=5, sigma=2.0):
    """A loss weight for every age 0..max_age, (max_age + 1,) float32, from the training
    ages: label-distribution smoothing with square-root inverse weighting (Yang et al.,
    "Delving into Deep Imbalanced Regression", ICML 2021). The square roots of the counts
    of each age are smoothed by a Gaussian window of `kernel_size` ages and `sigma`
    years, and a face weighs the inverse of that at its age: rare ages count more. The
    weights average 1 over the training faces, so the loss keeps its scale."""
    ages = np.clip(np.round(np.asarray(ages)), 0, max_age).astype(int)
    counts = np.bincount(ages, minlength=max_age + 1).astype(np.float64)
    offsets = np.arange(kernel_size) - kernel_size // 2
    window = np.exp(-0.5 * (offsets / sigma) ** 2)  # its peak is 1
    smoothed = np.convolve(np.sqrt(counts), window, mode="same")
    # An age far from every training face (never met in training) weighs the most.
    weights = 1.0 / np.maximum(smoothed, smoothed[smoothed > 0].min())
    return (weights / weights[ages].mean()).astype(np.float32)


# The fixed label noise of the Balanced MSE term (years): about a typical error at the
# middle ages.
BALANCED_MSE_SIGMA = 5.0


def log_age_prior(ages, max_age):
    """The log probability of every age 0..max_age, (max_age + 1,) float32, among the
    training ages, lightly smoothed (one more face at every age, so that no age is
    impossible): the label distribution that balanced_mse divides out."""
    ages = np.clip(np.round(np.asarray(ages)), 0, max_age).astype(int)
    counts = np.bincount(ages, minlength=max_age + 1) + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)


def balanced_mse(predicted, ages, log_prior, sigma=BALANCED_MSE_SIGMA):
    """Balanced MSE of each image (batch,), from predicted and true ages (batch, 1): Ren
    et al., "Balanced MSE for Imbalanced Visual Regression", CVPR 2022, in its GAI form
    with a fixed label noise `sigma` (years). The output is read as the mean of a Gaussian
    N(age; output, sigma²) and the training ages' distribution (`log_prior`, see
    log_age_prior) as a prior; the loss is the negative log of the true age's posterior,
    times 2 sigma², so that under a flat prior it is the squared error plus a constant. Its
    gradient is twice the posterior mean minus the true age: an old face's output is
    pushed up to where the many middle-aged faces no longer outweigh its age, instead of
    being pulled towards the middle ages as by a plain squared error."""
    predicted = ops.cast(predicted, "float32")  # (batch, outputs), outputs usually 1
    ages = ops.cast(ages, "float32")  # (batch, 1)
    log_prior = ops.cast(log_prior, "float32")  # (ages,)
    variance = 2.0 * sigma**2
    classes = ops.arange(ops.shape(log_prior)[0], dtype="float32")  # (ages,)
    # (batch, outputs, ages)
    logits = -ops.square(predicted[..., None] - classes) / variance + log_prior
    evidence = ops.logsumexp(logits, axis=-1)  # (batch, outputs)
    likelihood = -ops.square(predicted - ages) / variance  # (batch, outputs)
    # Several outputs (an AgeCNN's members while training): the mean of their terms.
    return ops.mean(variance * (evidence - likelihood), axis=-1)  # (batch,)


def mutual_disagreement(predicted):
    """Each image's mean absolute gap (batch,) between each member's age (predicted,
    (batch, members)) and the mean age of the other members, that mean held fixed: a
    member learns from the others' consensus as from a second, smoother label
    (co-distillation: Anil et al., 2018, "Large scale distributed neural network training
    through online distillation"; Zhang et al., 2018, "Deep mutual learning"). With one
    member, 0."""
    predicted = ops.cast(predicted, "float32")
    members = predicted.shape[-1]
    if members == 1:
        return ops.zeros_like(predicted[:, 0])
    others = (ops.sum(predicted, axis=-1, keepdims=True) - predicted) / (members - 1)
    return ops.mean(ops.abs(predicted - ops.stop_gradient(others)), axis=-1)


# RankSim's interpolation: how far the ranking's gradient looks, in units of the scores.
RANK_SIM_INTERPOLATION = 2.0


def _normalised_ranks(scores, count):
    """Each row's ranks among its scores (batch, n), the largest first: 1/count for the
    largest, 2/count for the next, and so on (count: the columns that take part, the
    others ranking after them)."""
    order = tf.argsort(scores, axis=-1, direction="DESCENDING", stable=True)
    ranks = tf.argsort(order, axis=-1, stable=True)
    return (tf.cast(ranks, "float32") + 1.0) / count


def _ranks_with_gradient(scores, count, interpolation):
    """_normalised_ranks with the gradient of "blackbox differentiation" (Vlastelica et
    al., ICLR 2020): the ranks are steps, so the gradient compares them with the ranks of
    the scores moved `interpolation` times the upstream gradient."""

    @tf.custom_gradient
    def ranks(scores):
        forward = _normalised_ranks(scores, count)

        def gradient(upstream):
            moved = _normalised_ranks(scores + interpolation * upstream, count)
            return (moved - forward) / interpolation

        return forward, gradient

    return ranks(scores)


def rank_similarity(features, ages, interpolation=RANK_SIM_INTERPOLATION):
    """The RankSim term of a batch, a float32 scalar (Gong et al., "RankSim: Ranking
    Similarity Regularization for Deep Imbalanced Regression", ICML 2022): for each face,
    its neighbours ranked by the cosine similarity of their features (batch, units)
    should come in the order of their ages' closeness (ages (batch, 1)); the mean squared
    difference of the two rankings. It orders the features by age across the whole range,
    the few old faces included, where a loss on each face alone sees them one at a time.

    Ties among equal ages would rank arbitrarily: as in the paper, one face of each age
    takes part, here the first of that age in the batch (the batches are shuffled)."""
    features = tf.math.l2_normalize(tf.cast(features, "float32"), axis=-1)
    ages = tf.reshape(tf.cast(ages, "float32"), (-1,))
    same_age = ages[:, None] == ages[None, :]  # (batch, batch)
    count = tf.shape(ages)[0]
    earlier = tf.linalg.band_part(tf.ones((count, count), "bool"), -1, 0)
    earlier = tf.logical_and(earlier, tf.logical_not(tf.eye(count, dtype="bool")))
    first = tf.logical_not(tf.reduce_any(same_age & earlier, axis=-1))  # (batch,)
    taking_part = tf.cast(tf.reduce_sum(tf.cast(first, "int32")), "float32")
    columns = tf.broadcast_to(first[None, :], (count, count))
    # The faces left out rank after every face that takes part: cosines are above -1.
    similarity = tf.where(columns, features @ tf.transpose(features), -2.0)
    closeness = tf.where(columns, -tf.abs(ages[:, None] - ages[None, :]), -1e9)
    feature_ranks = _ranks_with_gradient(similarity, taking_part, interpolation)
    age_ranks = tf.stop_gradient(_normalised_ranks(closeness, taking_part))
    both = tf.cast(columns & first[:, None], "float32")
    squared = tf.reduce_sum(both * tf.square(feature_ranks - age_ranks))
    return squared / tf.square(taking_part)


def loss_terms(
    head,
    outputs,
    labels,
    loss="l1",
    gender_weight=1.0,
    distribution_sigma=2.0,
    age_weights=None,
    average=None,
    balanced_mse_weight=0.0,
    age_prior=None,
    mutual_weight=0.0,
):
    """Return scalar float32 losses {"age", "gender", "distribution", "balanced_mse",
    "mutual" (each if given), "total"}.

    `loss` ("l1", "huber" or "l2") applies to the regression head; the classification
    head uses cross-entropy and the ordinal head CORAL's summed binary cross-entropies.
    A distribution head adds the cross-entropy against Gaussian soft labels of
    `distribution_sigma` years (DLDL, Gao et al. 2017). `age_weights`, a weight for every
    age (see lds_age_weights), weighs each image's age term by its age. `average` turns
    the terms of the images (batch,) into one: their mean by default; under a
    tf.distribute strategy, tf.nn.compute_average_loss, which divides a replica's sum by
    the global batch, so that the replicas' gradients add up to the global batch's.
    `balanced_mse_weight` adds that weight times the Balanced MSE of the predicted ages
    against `age_prior`, the training ages' log-prior (see balanced_mse).
    `mutual_weight` adds that weight times the members' disagreement (see
    mutual_disagreement).
    """
    average = average or ops.mean
    head = getattr(head, "head", head)
    _check_choice("head", head, HEADS)
    _check_choice("loss", loss, LOSSES)
    if not isinstance(outputs, dict):
        outputs = {"age": outputs}
    if not isinstance(labels, dict):
        labels = {"age": labels}
    ages = ops.reshape(ops.cast(labels["age"], "float32"), (-1, 1))  # (batch, 1)

    age_losses = _age_losses(head, outputs, ages, loss)  # (batch,)
    if age_weights is not None:
        last = ops.shape(age_weights)[0] - 1
        index = ops.cast(ops.clip(ops.round(ages[:, 0]), 0, last), "int32")
        age_losses = age_losses * ops.take(age_weights, index)
    age_loss = average(age_losses)
    terms = {"age": age_loss, "total": age_loss}
    if balanced_mse_weight:
        predicted = ages_from_outputs(head, outputs)  # (batch, 1), of any head
        terms["balanced_mse"] = average(balanced_mse(predicted, ages, age_prior))
        terms["total"] = terms["total"] + balanced_mse_weight * terms["balanced_mse"]
    if mutual_weight:
        terms["mutual"] = average(mutual_disagreement(outputs["age"]))
        terms["total"] = terms["total"] + mutual_weight * terms["mutual"]
    if "distribution_logits" in outputs:
        logits = ops.cast(outputs["distribution_logits"], "float32")
        targets = soft_age_labels(ages, ops.shape(logits)[-1], distribution_sigma)
        terms["distribution"] = average(
            keras.losses.categorical_crossentropy(targets, logits, from_logits=True)
        )
        terms["total"] = terms["total"] + terms["distribution"]
    if "gender_logit" in outputs and "gender" in labels:
        gender = ops.reshape(labels["gender"], (-1,))  # (batch,), -1 = missing
        known = ops.cast(gender >= 0, "float32")
        per_image = ops.binary_crossentropy(
            ops.cast(ops.maximum(gender, 0), "float32"),
            ops.reshape(ops.cast(outputs["gender_logit"], "float32"), (-1,)),
            from_logits=True,
        )
        # Average over the images whose gender is known; 0 when none is.
        share = ops.cast(ops.shape(known)[0], "float32") / ops.maximum(
            ops.sum(known), 1.0
        )
        terms["gender"] = average(per_image * known) * share
        terms["total"] = terms["total"] + gender_weight * terms["gender"]
    return terms
