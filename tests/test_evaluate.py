"""The evaluate stage's library: scores from a confusion matrix, the most confident mistakes,
and the captioned digit grids."""

import io
import struct

import numpy as np
import pytest
from PIL import Image

from stages import drawing, metrics

# Three classes, eight images: hand-computed below.
ACTUAL = np.array([0, 0, 0, 0, 1, 1, 2, 2])
PREDICTED = np.array([0, 0, 0, 1, 1, 0, 2, 1])


def test_confusion_matrix_counts_actual_by_predicted():
    counts = metrics.confusion_matrix(ACTUAL, PREDICTED, 3)
    np.testing.assert_array_equal(counts, [[3, 1, 0], [1, 1, 0], [0, 1, 1]])


def test_macro_scores_and_per_class_accuracy_by_hand():
    # precision = correct / predicted as the class: 3/4, 1/3, 1/1
    # recall = correct / images of the class:       3/4, 1/2, 1/2
    # F1 = 2PR / (P + R):                          3/4, 2/5, 2/3
    summary = metrics.summary(metrics.confusion_matrix(ACTUAL, PREDICTED, 3))
    assert summary == {
        "macro": {"precision": round((3 / 4 + 1 / 3 + 1) / 3, 6),
                  "recall": round((3 / 4 + 1 / 2 + 1 / 2) / 3, 6),
                  "f1": round((3 / 4 + 2 / 5 + 2 / 3) / 3, 6)},
        "per_class_accuracy": {"0": 0.75, "1": 0.5, "2": 0.5},
    }
    assert summary["macro"] == {"precision": 0.694444, "recall": 0.583333, "f1": 0.605556}


def test_a_class_never_seen_or_predicted_scores_zero_not_nan():
    # Class 3 has no images and no predictions: its ratios are 0/0, counted as 0.
    summary = metrics.summary(metrics.confusion_matrix(ACTUAL, PREDICTED, 4))
    assert summary["per_class_accuracy"] == {"0": 0.75, "1": 0.5, "2": 0.5, "3": 0.0}
    assert summary["macro"]["precision"] == round((3 / 4 + 1 / 3 + 1 + 0) / 4, 6)
    assert summary["macro"]["f1"] == round((3 / 4 + 2 / 5 + 2 / 3 + 0) / 4, 6)


def test_a_perfect_classifier_scores_one_everywhere():
    labels = np.arange(10).repeat(3)
    summary = metrics.summary(metrics.confusion_matrix(labels, labels, 10))
    assert summary["macro"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert summary["per_class_accuracy"] == {str(d): 1.0 for d in range(10)}


def test_mistakes_are_the_most_confident_wrong_predictions_first():
    actual = np.array([1, 2, 3, 4, 5, 6, 7])
    predicted = np.array([1, 0, 3, 0, 0, 0, 0])  # images 1, 3, 4, 5, 6 are wrong
    confidence = np.array([0.99, 0.6, 0.98, 0.9, 0.6, 0.95, 0.7])
    picked = metrics.most_confident_mistakes(actual, predicted, confidence, 4)
    # The two right ones (0.99, 0.98) are skipped; the 0.6 tie keeps image 1 before image 4.
    assert picked.tolist() == [5, 3, 6, 1]
    assert metrics.most_confident_mistakes(actual, predicted, confidence, 9).tolist() == [
        5, 3, 6, 1, 4]
    assert metrics.most_confident_mistakes(actual, predicted, confidence, 0).tolist() == []
    assert metrics.most_confident_mistakes(actual, actual, confidence, 4).tolist() == []


def blank_digits(count: int) -> np.ndarray:
    return np.zeros((count, 28 * 28), np.float32)


def pixels_of(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def png_chunks(png: bytes) -> list[bytes]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        chunks.append(png[at + 4 : at + 8])
        at += 12 + length
    return chunks


def test_grid_size_follows_rows_columns_and_caption_lines():
    one_row = drawing.digit_grid(blank_digits(10), ["7 / 7"] * 10, [False] * 10, "t")
    # 10 cells of 76 px and 10 px margins; title line 16 + pad 6 + a cell of
    # 56 (digit) + 3 * 6 (pads) + 16 (one caption line) + a 10 px margin.
    assert one_row.size == (780, 132)
    three_rows = drawing.digit_grid(blank_digits(12), ["1 / 2\n0.9"] * 12, [True] * 12, "t",
                                    columns=5)
    assert three_rows.size == (400, 10 + 16 + 6 + 3 * (56 + 18 + 32) + 10)
    # A long title widens the picture rather than being cut off.
    titled = drawing.digit_grid(blank_digits(1), ["1 / 1"], [False], "x" * 200)
    assert titled.size[0] > 780


def test_grid_places_each_digit_in_its_cell_as_dark_ink():
    digits = blank_digits(3)
    digits[1] = 1.0  # all ink
    pixels = pixels_of(drawing.png_bytes(
        drawing.digit_grid(digits, ["a", "b", "c"], [False] * 3, "t", columns=2)))
    top = drawing.MARGIN + drawing.LINE + drawing.PAD + drawing.PAD
    left = drawing.MARGIN + drawing.CELL_WIDTH + (drawing.CELL_WIDTH - drawing.DIGIT) // 2
    ink = pixels[top : top + 56, left : left + 56]
    assert (ink == 0).all()
    # The blank digits to its left and below stay white.
    assert (pixels[top : top + 56, left - drawing.CELL_WIDTH : left - 20] == 255).all()


def test_png_bytes_are_deterministic_and_carry_no_metadata():
    def draw() -> bytes:
        rng = np.random.default_rng(3)
        return drawing.png_bytes(drawing.digit_grid(
            rng.random((5, 784), np.float32), ["3 / 3", "1 / 7", "0 / 0", "9 / 4", "2 / 2"],
            [False, True, False, True, False], "sample"))

    first = draw()
    assert first == draw()
    assert png_chunks(first) == [b"IHDR", b"IDAT", b"IEND"]


def caption_box(index: int, lines: int = 1) -> tuple[slice, slice]:
    """Rows and columns inside cell `index` (of one row) where its caption is, frame left out."""
    top = drawing.MARGIN + drawing.LINE + drawing.PAD + drawing.DIGIT + 2 * drawing.PAD
    left = drawing.MARGIN + index * drawing.CELL_WIDTH
    return (slice(top, top + lines * drawing.LINE),
            slice(left + 4, left + drawing.CELL_WIDTH - 4))


def blend_of(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """How much of `colour` over white each non-white pixel shows, per channel: anti-aliased
    text in that colour gives the same share in every channel."""
    inked = pixels[(pixels != 255).any(axis=-1)].astype(float)
    return (255 - inked) / (255 - np.array(colour, float))


def assert_drawn_in(pixels: np.ndarray, colour: tuple[int, int, int]) -> None:
    share = blend_of(pixels, colour)
    assert len(share)
    assert np.ptp(share, axis=1).max() < 0.03  # rounding to whole levels, no other hue
    assert share.max() > 0.6  # solid strokes, not just a faint fringe


def test_wrong_predictions_are_captioned_and_framed_in_red():
    pixels = pixels_of(drawing.png_bytes(drawing.digit_grid(
        blank_digits(2), ["7 / 7", "6 / 5"], [False, True], "t")))
    right, wrong = (pixels[caption_box(i)] for i in (0, 1))
    assert_drawn_in(right, drawing.INK)
    assert_drawn_in(wrong, drawing.WRONG)
    with pytest.raises(AssertionError):
        assert_drawn_in(right, drawing.WRONG)
    # The frames: red around the wrong digit, light grey around the right one.
    frame_row = drawing.MARGIN + drawing.LINE + drawing.PAD + 30
    assert tuple(pixels[frame_row, drawing.MARGIN + 1]) == drawing.FRAME
    assert tuple(pixels[frame_row, drawing.MARGIN + drawing.CELL_WIDTH + 1]) == drawing.WRONG


def test_an_empty_grid_is_just_its_title():
    image = drawing.digit_grid(blank_digits(0), [], [], "No wrong predictions")
    pixels = np.asarray(image)
    assert image.size[1] == 10 + 16 + 6 + 10
    assert (pixels != 255).any()

