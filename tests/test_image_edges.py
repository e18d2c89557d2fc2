"""The edges of the image rules that the broader tests of test_image_prep.py leave open, each pinned exactly: 32-bit
pixels beyond 16 bits clipped, palette images with alpha, partial transparency everywhere, a ground decided by one
faint pixel or by an exact half, the border's four sides read for the background, a one-row result kept one row."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from softmax_lab.data.image_files import SIDE, _grey, fit_to_square


def grey_of(img):
    notes = []
    return _grey(img, notes), notes


def test_32_bit_pixels_beyond_16_bits_are_clipped_to_white():
    raw = np.zeros((4, 4), np.int32)
    raw[0, 0], raw[1, 1] = 100_000, 65535  # scaled from 0..65535: 1.53 is clipped to 1
    grey, notes = grey_of(Image.fromarray(raw, mode="I"))
    assert notes == ["I pixels scaled from 0..65535"] and grey[0, 0] == 1.0 and grey[1, 1] == 1.0 and grey.max() == 1.0


def test_a_palette_image_with_alpha_is_composited():
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[2:4, 2:4] = (255, 255, 255, 255)
    img = Image.fromarray(rgba, mode="RGBA").convert("PA")
    assert img.mode == "PA" and "transparency" not in img.info
    grey, notes = grey_of(img)
    assert notes == ["transparent background made black (light object)"] and grey[2, 2] == 1.0 and grey[0, 0] == 0.0


def test_an_image_transparent_in_part_everywhere_is_composited():
    # no pixel wholly transparent: alpha 200/255 on the object, 20/255 around it; still composited on black
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 3] = 20
    rgba[2:4, 2:4] = (255, 255, 255, 200)
    grey, notes = grey_of(Image.fromarray(rgba, mode="RGBA"))
    assert notes == ["transparent background made black (light object)"]
    assert grey[2, 2] == pytest.approx(200 / 255, abs=1 / 255) and grey[0, 0] == 0.0


def test_one_faint_white_pixel_on_nothing_is_a_light_object():
    # the shade weighted by alpha: 1.0 whatever the total alpha (0.39 here: a guard of 1 would make it 0.39, dark)
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[3, 3] = (255, 255, 255, 100)
    assert grey_of(Image.fromarray(rgba, mode="RGBA"))[1] == ["transparent background made black (light object)"]


def test_an_object_exactly_half_light_is_dark():
    # one black and one white opaque pixel: mean shade exactly 0.5, not over it: a dark object, on white
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[2, 2], rgba[3, 3] = (0, 0, 0, 255), (255, 255, 255, 255)
    assert grey_of(Image.fromarray(rgba, mode="RGBA"))[1] == ["transparent background made white (dark object)"]


def bordered(sides: str, level: float = 0.5, n: int = 40) -> np.ndarray:
    """A black n x n image with a white object in the middle and a one-pixel band of `level` along `sides`
    (t, b, l, r: top, bottom, left, right)."""
    img = np.zeros((n, n), np.float32)
    img[15:25, 15:25] = 1.0
    for side, band in zip("tblr", (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1]), strict=True):
        if side in sides:
            img[band] = level
    return img


@pytest.mark.parametrize("sides", ["tl", "br", "tr", "bl"])
def test_the_background_is_the_median_of_the_four_outermost_sides(sides):
    # two of the four sides grey: the median of the border is half way, 0.25 (> 0.05), so it is levelled and said
    notes = []
    smooth_ground = np.median(np.concatenate([s for s in _smoothed_sides(bordered(sides))]))
    fit_to_square(bordered(sides), notes)
    assert smooth_ground > 0.05 and notes == [f"background {smooth_ground:.2f} levelled to black"]


def _smoothed_sides(img):
    from PIL import ImageFilter

    smooth = np.asarray(Image.fromarray((img * 255).astype(np.uint8)).filter(ImageFilter.MedianFilter(3)),
                        dtype=np.float32) / 255
    return smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1]


@pytest.mark.parametrize("sides", ["t", "b", "l", "r"])
def test_one_grey_side_of_four_is_not_a_background(sides):
    notes = []
    fit_to_square(bordered(sides), notes)
    assert notes == []


def test_the_background_level_said_is_the_pixels_over_255():
    img = np.full((40, 40), 37 / 255, np.float32)  # 0.145: said as 0.15 (over 256 it would be 0.14)
    img[15:25, 15:25] = 1.0
    notes = []
    fit_to_square(img, notes)
    assert notes == ["background 0.15 levelled to black"]


def test_a_one_row_object_stays_one_row():
    img = np.zeros((1, 100), np.float32)
    img[0, 40:60] = 1.0  # 1 x 20 after the crop: scale 1.4, so 28 x 1
    out = fit_to_square(img)
    assert (out.sum(axis=1) > 0).sum() == 1 and out.shape == (SIDE, SIDE)


def patch(img: np.ndarray, rows: slice, cols: slice, level: float) -> np.ndarray:
    out = img.copy()
    out[rows, cols] = level
    return out


def object_on(ground: float = 0.0, level: float = 1.0) -> np.ndarray:
    img = np.full((80, 80), ground, np.float32)
    img[40:70, 40:70] = level
    return img


def test_what_stands_exactly_a_quarter_of_the_contrast_above_the_ground_is_not_the_object():
    # an object of 204/255 on black: the threshold is exactly 51/255, and a patch of 51/255 stays out of the box
    img = object_on(level=204 / 255)
    assert np.array_equal(fit_to_square(patch(img, np.s_[5:15], np.s_[5:15], 51 / 255)), fit_to_square(img))
    assert not np.array_equal(fit_to_square(patch(img, np.s_[5:15], np.s_[5:15], 52 / 255)), fit_to_square(img))


def test_the_threshold_is_a_quarter_of_the_contrast_times_it():
    # contrast 0.5: the threshold is 0.125, so a patch of 0.3 is part of the object (a quarter over it would be 0.5)
    img = object_on(level=128 / 255)
    assert not np.array_equal(fit_to_square(patch(img, np.s_[5:15], np.s_[5:15], 0.3)), fit_to_square(img))


def test_on_a_grey_ground_the_contrast_is_from_the_ground():
    # ground 0.3, object 1.0: the threshold is 0.3 + 0.25 * 0.7 = 0.475, so a patch of 0.55 is part of the object
    img = object_on(ground=0.3)
    assert not np.array_equal(fit_to_square(patch(img, np.s_[5:15], np.s_[5:15], 0.55)), fit_to_square(img))


def test_a_speck_of_one_percent_of_the_object_is_part_of_it():
    # 12 of about 900 object pixels (a 4x4 patch less its corners after the median) above and left of the box:
    # more than the 0.5% trimmed on each side, so the box reaches it, across and down
    img = object_on()
    with_speck = patch(img, np.s_[5:9], np.s_[5:9], 1.0)
    out = fit_to_square(with_speck)
    assert not np.array_equal(out, fit_to_square(img)) and out[:3, :3].any()


# --- prepare_image: reading a file ----------------------------------------------------------------------------------

def saved(tmp_path, grey: np.ndarray, name: str = "x.png"):
    path = tmp_path / name
    Image.fromarray(np.round(grey * 255).astype(np.uint8), mode="L").save(path)
    return path


def sided(light: str, n: int = 40, light_level: float = 230 / 255, dark_level: float = 51 / 255) -> np.ndarray:
    """A black n x n image with a mid-grey object in the middle; the top and bottom rows, then the left and right
    columns (corners go to the columns), `light_level` on the sides named in `light` (t, b, l, r), else dark."""
    img = np.zeros((n, n), np.float32)
    img[15:25, 15:25] = 0.6
    for side, band in zip("tblr", (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1]), strict=True):
        img[band] = light_level if side in light else dark_level
    return img


@pytest.mark.parametrize("light", ["tl", "br"])
def test_the_background_is_the_median_of_the_four_outermost_sides_of_the_file(tmp_path, light):
    # two light sides of four: the median of the border is (51 + 230) / 2 / 255 = 0.55 > 0.5: a light background.
    # The rows and columns just inside are black: taking one of them for a side would make it dark.
    from softmax_lab.data.image_files import prepare_image

    assert "inverted (light background)" in prepare_image(saved(tmp_path, sided(light)))[1]


def test_a_border_of_exactly_half_light_is_not_inverted(tmp_path):
    from softmax_lab.data.image_files import prepare_image

    notes = prepare_image(saved(tmp_path, sided("tl", light_level=1.0, dark_level=0.0)))[1]
    assert "inverted (light background)" not in notes


def test_an_image_one_percent_dark_is_not_blank(tmp_path):
    from softmax_lab.data.image_files import prepare_image

    img = np.ones((100, 100), np.float32)
    img[45:55, 45:55] = 0.0  # 1% of the pixels: above the 0.5% the blank test leaves out at each end
    grey, notes = prepare_image(saved(tmp_path, img))
    assert "inverted (light background)" in notes and grey.max() == 1.0


def test_an_unreadable_file_quotes_pils_reason_to_120_characters(tmp_path):
    from softmax_lab.data.image_files import ImageError, prepare_image

    path = tmp_path / ("n" * 150 + ".png")
    path.write_bytes(b"not an image at all")
    with pytest.raises(ImageError) as e:
        prepare_image(path)
    said = str(e.value).split(": not a readable image (", 1)[1]
    assert len(said) == 121 and said.endswith(")")  # 120 characters of PIL's reason, then the bracket


def test_an_image_of_no_pixels_is_refused_by_name(tmp_path, monkeypatch):
    from softmax_lab.data import image_files

    monkeypatch.setattr(image_files, "_grey", lambda img, notes: np.zeros((0, 0), np.float32))
    with pytest.raises(image_files.ImageError, match=r"^x\.png: an empty image$"):
        image_files.prepare_image(saved(tmp_path, np.zeros((4, 4), np.float32)))


# --- image_files: what a spec means ------------------------------------------------------------------------------

def test_a_glob_with_every_wildcard_is_a_glob(tmp_path):
    from softmax_lab.data.image_files import image_files

    (tmp_path / "zzqax.png").write_bytes(b"")
    assert image_files(str(tmp_path / "*?[ab]x.png")) == [tmp_path / "zzqax.png"]


def test_a_name_without_wildcards_is_taken_as_given_even_when_not_a_regular_file(tmp_path):
    import os

    from softmax_lab.data.image_files import image_files

    os.mkfifo(tmp_path / "X.png")  # not a regular file: taken as named (reading it is refused by name later)
    assert image_files(str(tmp_path / "X.png")) == [tmp_path / "X.png"]
