"""mnist-predict: pictures of digits brought into MNIST's form, and the model's answer for them.

The round trips save a 28x28 digit as a larger picture (white on black, or black on white,
padded and scaled 3x) and check that the prediction for the picture equals the prediction for
the array itself. They run on digits drawn with Pillow's built-in font and a template-matching
model built here, always; and on the real test set and model when `dvc repro` has made them.
"""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from stages import dataset, digit_image, modelfile, network

ROOT = Path(__file__).parents[1]
REAL_MODEL = ROOT / "models/model.npz"
REAL_TEST_X = ROOT / "data/prepared/x_test.npy"
LINE = re.compile(r"(?P<path>.+): (?P<digit>\d)  (?P<probs>(?:\d:\d\.\d{4} ?){10})")


def predict(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stages.predict", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def parsed(stdout: str) -> dict[str, tuple[int, list[float]]]:
    """{image path: (digit, ten probabilities)} from the command's output."""
    answers = {}
    for line in stdout.splitlines():
        match = LINE.fullmatch(line)
        assert match, f"unexpected output line {line!r}"
        probs = [float(pair.split(":")[1]) for pair in match["probs"].split()]
        assert [pair.split(":")[0] for pair in match["probs"].split()] == list("0123456789")
        answers[match["path"]] = (int(match["digit"]), probs)
    return answers


def picture(digit: np.ndarray, path: Path, dark_on_light: bool, pad: int = 12,
            scale: int = 3) -> Path:
    """A 28x28 uint8 digit saved as a picture: optionally inverted, padded, scaled up."""
    pixels = 255 - digit if dark_on_light else digit
    pixels = np.pad(pixels, pad, constant_values=pixels[0, 0])
    image = Image.fromarray(pixels, "L")
    image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST).save(path)
    return path


def font_digits() -> np.ndarray:
    """The digits 0-9 drawn with Pillow's built-in font, dark on light, as 28x28 MNIST images."""
    font = ImageFont.load_default(40)
    digits = []
    for d in range(10):
        image = Image.new("L", (48, 56), 255)
        ImageDraw.Draw(image).text((8, 4), str(d), fill=0, font=font)
        digits.append(digit_image.mnist_digit(np.asarray(image)))
    return np.array(digits)


@pytest.fixture(scope="module")
def template_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A one-layer model scoring each class by how well the image matches that class's font
    digit (cosine similarity, sharpened), and the digits."""
    digits = font_digits()
    rows = dataset.normalise(digits)
    weights = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).T * np.float32(20)
    path = tmp_path_factory.mktemp("model") / "templates.npz"
    biases = [np.zeros(10, np.float32)]
    path.write_bytes(modelfile.encode([weights.astype(np.float32)], biases, "relu"))
    return path, digits


def array_predictions(model: Path, rows: np.ndarray) -> np.ndarray:
    weights, biases, activation = modelfile.load(model)
    return network.softmax(network.logits_in_chunks(weights, biases, rows, activation))


# ---------------------------------------------------------------------------- round trips


def test_font_digits_come_back_as_themselves(tmp_path: Path, template_model) -> None:
    model, digits = template_model
    assert array_predictions(model, dataset.normalise(digits)).argmax(axis=1).tolist() == list(
        range(10))
    paths = []
    for d, digit in enumerate(digits):
        paths.append(picture(digit, tmp_path / f"{d}-white-on-black.png", dark_on_light=False))
        paths.append(picture(digit, tmp_path / f"{d}-black-on-white.png", dark_on_light=True))
        jpeg = tmp_path / f"{d}-black-on-white.jpg"
        Image.open(paths[-1]).save(jpeg, quality=90)
        paths.append(jpeg)
    result = predict("--model", model, *paths)
    assert result.returncode == 0, result.stderr
    answers = parsed(result.stdout)
    assert list(answers) == [str(p) for p in paths]  # one line each, in the order given
    for path, (digit, probs) in answers.items():
        assert digit == int(Path(path).name[0]), (path, probs)
        assert digit == int(np.argmax(probs))
        assert sum(probs) == pytest.approx(1, abs=1e-3)


@pytest.mark.skipif(not (REAL_MODEL.exists() and REAL_TEST_X.exists()),
                    reason="no trained model or prepared test set (run dvc repro)")
def test_real_test_digits_keep_their_prediction(tmp_path: Path) -> None:
    rows = np.load(REAL_TEST_X, allow_pickle=False)[:20]
    probs = array_predictions(REAL_MODEL, rows)
    # A digit the model is unsure of may tip either way after any resampling at all.
    confident = [i for i in range(len(rows)) if probs[i].max() >= 0.9]
    assert len(confident) >= 10, probs.max(axis=1)
    paths, expected = [], {}
    for i in confident:
        digit = np.round(rows[i].reshape(28, 28) * 255).astype(np.uint8)
        for dark_on_light in (False, True):
            path = picture(digit, tmp_path / f"{i}-{dark_on_light}.png", dark_on_light)
            paths.append(path)
            expected[str(path)] = int(probs[i].argmax())
    result = predict(*paths)
    assert result.returncode == 0, result.stderr
    assert {path: digit for path, (digit, _) in parsed(result.stdout).items()} == expected


# ---------------------------------------------------------------------------- bad input


def test_bad_images_get_one_line_each_and_the_rest_an_answer(
    tmp_path: Path, template_model
) -> None:
    model, digits = template_model
    good = picture(digits[4], tmp_path / "four.png", dark_on_light=True)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 30), 200).save(blank)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    missing = tmp_path / "missing.png"
    result = predict("--model", model, text, good, blank, missing, truncated)
    assert result.returncode == 1
    assert list(parsed(result.stdout)) == [str(good)]
    assert result.stderr.splitlines() == [
        f"error: {text}: not an image Pillow can read (PNG or JPEG expected)",
        f"error: {blank}: no digit found: the image is blank",
        f"error: {missing}: not found",
        f"error: {truncated}: cannot read the image: {truncated_message(truncated)}",
    ]


def truncated_message(path: Path) -> str:
    try:
        with Image.open(path) as image:
            image.load()
    except OSError as err:
        return str(err)
    raise AssertionError("the truncated file loaded")


def test_a_bad_model_is_one_line_and_exit_1(tmp_path: Path, template_model) -> None:
    _, digits = template_model
    image = picture(digits[1], tmp_path / "one.png", dark_on_light=False)
    result = predict("--model", tmp_path / "none.npz", image)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"error: {tmp_path / 'none.npz'}: not found (run the earlier " \
                            f"stages first)\n"
    wrong = tmp_path / "wrong.npz"
    biases = [np.zeros(10, np.float32)]
    wrong.write_bytes(modelfile.encode([np.zeros((100, 10), np.float32)], biases, "relu"))
    result = predict("--model", wrong, image)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"error: {wrong}: maps 100 inputs to 10 classes, expected 784 and 10\n"
    nan = np.zeros((784, 10), np.float32)
    nan[3, 4] = np.nan
    wrong.write_bytes(modelfile.encode([nan], biases, "relu"))
    result = predict("--model", wrong, image)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"error: {wrong}: layer 0 holds NaN or infinite numbers, expected " \
                            f"finite ones\n"
    # Finite weights whose products overflow float32.
    wrong.write_bytes(modelfile.encode([np.full((784, 10), 1e37, np.float32)], biases, "relu"))
    result = predict("--model", wrong, image)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"error: {wrong}: gives non-finite outputs for {image}\n"


def test_the_default_model_is_models_model_npz(tmp_path: Path, template_model) -> None:
    model, digits = template_model
    (tmp_path / "models").mkdir()
    (tmp_path / "models/model.npz").write_bytes(model.read_bytes())
    image = picture(digits[7], tmp_path / "seven.png", dark_on_light=True)
    result = predict(image, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert parsed(result.stdout)[str(image)][0] == 7


@pytest.mark.skipif(not (Path(sys.executable).parent / "mnist-predict").exists(),
                    reason="the project is not installed in this environment")
def test_the_console_script_runs_the_same_command(tmp_path: Path, template_model) -> None:
    model, digits = template_model
    image = picture(digits[2], tmp_path / "two.png", dark_on_light=True)
    script = Path(sys.executable).parent / "mnist-predict"
    result = subprocess.run([script, "--model", model, image], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == predict("--model", model, image).stdout
    assert parsed(result.stdout)[str(image)][0] == 2


# ---------------------------------------------------------------------------- the steps


def test_a_light_background_is_inverted_and_becomes_zero() -> None:
    grey = np.full((10, 12), 255, np.uint8)
    grey[3:6, 4:9] = 0  # black ink
    grey[6, 4:9] = 128  # a grey edge
    ink = digit_image.to_ink(grey)
    expected = np.zeros((10, 12), np.float32)
    expected[3:6, 4:9] = 255
    expected[6, 4:9] = 127
    np.testing.assert_array_equal(ink, expected)


def test_a_dark_background_is_kept_and_levels_are_stretched() -> None:
    grey = np.full((10, 12), 40, np.uint8)  # a grey photo background, not quite black
    grey[2:8, 5] = 140  # faint chalk
    grey[2, 6] = 90
    ink = digit_image.to_ink(grey)
    assert ink[0, 0] == 0
    assert ink[2, 5] == 255
    assert ink[2, 6] == pytest.approx(127.5)


def test_crop_keeps_exactly_the_ink_above_the_noise() -> None:
    ink = np.zeros((40, 50), np.float32)
    ink[5:9, 10:13] = 255
    ink[30, 40] = 0.09 * 255  # below INK_THRESHOLD of the strongest: noise
    ink[8, 20] = 0.11 * 255  # above it: a faint stroke end
    cropped = digit_image.crop_to_ink(ink)
    np.testing.assert_array_equal(cropped, ink[5:9, 10:21])
    with pytest.raises(ValueError, match="no ink"):
        digit_image.crop_to_ink(np.zeros((5, 5), np.float32))


@pytest.mark.parametrize(("shape", "fitted"),
                         [((10, 40), (5, 20)), ((40, 10), (20, 5)), ((3, 3), (20, 20)),
                          ((100, 30), (20, 6)), ((1, 200), (1, 20))])
def test_fit_box_keeps_the_aspect_ratio(shape: tuple[int, int], fitted: tuple[int, int]) -> None:
    block = np.full(shape, 255, np.float32)
    digit = digit_image.fit_box(block)
    assert digit.shape == fitted
    assert digit.dtype == np.uint8
    assert digit.max() == 255


def test_fit_box_antialiases_a_downscaled_stroke() -> None:
    stripes = np.zeros((60, 60), np.float32)
    stripes[:, ::3] = 255  # 1-pixel lines every 3 pixels, shrunk 3x: an even grey
    digit = digit_image.fit_box(stripes)
    assert digit.shape == (20, 20)
    assert 60 <= digit[5:15, 5:15].min() <= digit[5:15, 5:15].max() <= 110


@pytest.mark.parametrize("seed", range(5))
def test_the_centre_of_mass_lands_within_half_a_pixel_of_14_14(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = rng.integers(8, 21, size=2)
    digit = np.zeros((height, width), np.uint8)
    digit[: height // 2, :] = rng.integers(100, 256, size=(height // 2, width))  # top-heavy
    digit[:, : width // 3] = 255  # left-heavy
    field = digit_image.place_centred(digit)
    assert field.shape == (28, 28)
    assert field.sum() == digit.sum()  # nothing fell off the field
    row, col = digit_image.centre_of_mass(field)
    assert abs(row - 14) <= 0.5
    assert abs(col - 14) <= 0.5


def test_ink_is_never_pushed_off_the_field() -> None:
    digit = np.zeros((20, 20), np.uint8)
    digit[0, 0] = 255  # all the mass in a corner: centring it would move the box off the field
    digit[19, 19] = 1
    field = digit_image.place_centred(digit)
    assert field.sum() == digit.sum()
    assert field[8, 8] == 255  # the box as far towards the centre as the field allows
    assert field[27, 27] == 1


def test_mnist_digit_of_an_mnist_digit_is_nearly_itself() -> None:
    digit = font_digits()[8]
    again = digit_image.mnist_digit(digit)
    assert np.abs(again.astype(int) - digit).mean() < 2
    row, col = digit_image.centre_of_mass(again)
    assert abs(row - 14) <= 0.5
    assert abs(col - 14) <= 0.5


def test_transparency_is_shown_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((30, 30, 4), np.uint8)  # transparent black everywhere
    rgba[10:20, 14:16] = (0, 0, 0, 255)  # an opaque black stroke
    path = tmp_path / "stroke.png"
    Image.fromarray(rgba, "RGBA").save(path)
    grey = digit_image.load_grey(path)
    assert grey[0, 0] == 255
    assert grey[15, 15] == 0


def test_a_camera_rotation_flag_is_applied(tmp_path: Path) -> None:
    grey = np.zeros((20, 40), np.uint8)
    image = Image.fromarray(grey, "L")
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(buffer.getvalue())
    assert digit_image.load_grey(path).shape == (40, 20)
