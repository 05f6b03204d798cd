"""Classification scores from predicted and actual labels: the confusion matrix, macro
precision/recall/F1, per-class accuracy, and the most confidently wrong predictions.

A ratio with nothing to divide (precision of a digit never predicted, say) counts as 0, as
scikit-learn's zero_division=0 does: it keeps every score a finite number for JSON.
"""

import numpy as np


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """counts[a, p]: how many images of class a were predicted as p."""
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (actual, predicted), 1)
    return counts


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    safe = np.where(denominator > 0, denominator, 1)
    return np.where(denominator > 0, numerator / safe, 0.0)


def class_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall and F1 of a confusion matrix. Recall is the class's
    accuracy: the share of its images that were labelled correctly."""
    correct = np.diag(counts).astype(np.float64)
    precision = ratio(correct, counts.sum(axis=0))
    recall = ratio(correct, counts.sum(axis=1))
    f1 = ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def summary(counts: np.ndarray, digits: int = 6) -> dict:
    """Macro (unweighted mean over classes) precision, recall and F1, and per-class accuracy
    keyed by class number, rounded to `digits` decimals."""
    scores = class_scores(counts)
    macro = {name: round(float(values.mean()), digits) for name, values in scores.items()}
    per_class = {str(c): round(float(r), digits) for c, r in enumerate(scores["recall"])}
    return {"macro": macro, "per_class_accuracy": per_class}


def most_confident_mistakes(actual: np.ndarray, predicted: np.ndarray, confidence: np.ndarray,
                            count: int) -> np.ndarray:
    """Indices of up to `count` wrong predictions, highest confidence first; ties keep the
    earlier image first."""
    wrong = np.flatnonzero(actual != predicted)
    order = np.argsort(-confidence[wrong], kind="stable")
    return wrong[order[:count]]
