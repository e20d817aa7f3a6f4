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
from keras import ops

from model import HEADS, _check_choice, ages_from_outputs

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
):
    """Return scalar float32 losses {"age", "gender", "distribution", "balanced_mse" (each
    if given), "total"}.

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
    """
    average = average or ops.mean
    head = getattr(head, "head", head)
    _check_choice("head", head, HEADS)
    _check_choice("loss", loss, ("l1", "huber", "l2"))
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
