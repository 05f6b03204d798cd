import numpy as np

from stages import augment


def test_each_image_moves_by_its_own_offset_within_the_limit():
    images = np.zeros((200, 49), np.float32)  # 7x7, one lit pixel in the middle
    images[:, 3 * 7 + 3] = np.arange(1, 201)
    augment.shift(images, 2, np.random.default_rng(0))
    moved = images.reshape(200, 7, 7)
    offsets = set()
    for i, image in enumerate(moved):
        (row,), (col,) = np.nonzero(image)
        assert image[row, col] == i + 1  # the same pixel, intact, and nothing else lit
        offsets.add((row - 3, col - 3))
    assert offsets == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}


def test_a_shift_is_a_translation_with_zeros_moved_in():
    image = np.arange(1, 26, dtype=np.float32).reshape(1, 25)  # 5x5, no zeros
    rng = np.random.default_rng(3)
    dy, dx = np.random.default_rng(3).integers(0, 3, (2, 1))  # the draw shift() makes
    augment.shift(image, 1, rng)
    got = image.reshape(5, 5)
    want = np.zeros((7, 7), np.float32)
    want[1:6, 1:6] = np.arange(1, 26).reshape(5, 5)
    np.testing.assert_array_equal(got, want[dy[0] : dy[0] + 5, dx[0] : dx[0] + 5])


def test_same_generator_state_same_shifts():
    base = np.random.default_rng(1).random((10, 784), dtype=np.float32)
    a, b = base.copy(), base.copy()
    augment.shift(a, 2, np.random.default_rng(7))
    augment.shift(b, 2, np.random.default_rng(7))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != base.tobytes()
