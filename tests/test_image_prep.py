"""fit_to_square, exactly: a user's image is trimmed to its object, its longer side scaled to 28 and centred on black,
as Fashion-MNIST's images were made. The oracle is the arithmetic of the crop, the scale and the centring, done by
hand for objects of known place and size (plain white boxes, so that any resampling leaves them white)."""

from __future__ import annotations

import numpy as np
import pytest

from softmax_lab.data.image_files import SIDE, fit_to_square


def box(shape=(100, 60), rows=(20, 50), cols=(10, 25), ground=0.0) -> np.ndarray:
    img = np.full(shape, ground, np.float32)
    img[rows[0] : rows[1], cols[0] : cols[1]] = 1.0
    return img


def expected(width: int, height: int) -> np.ndarray:
    """A white width x height box centred on a black 28x28 canvas, as PIL's paste places it."""
    out = np.zeros((SIDE, SIDE), np.float32)
    left, top = (SIDE - width) // 2, (SIDE - height) // 2
    out[top : top + height, left : left + width] = 1.0
    return out


def test_a_tall_object_fills_the_height_and_is_centred_across():
    # 30 rows x 15 columns: scale 28/30, so 14 columns wide, placed from column 7
    np.testing.assert_array_equal(fit_to_square(box()), expected(14, 28))


def test_a_wide_object_fills_the_width_and_is_centred_down():
    # 10 rows x 40 columns: 28 wide, 7 rows high, placed from row 10
    np.testing.assert_array_equal(fit_to_square(box(rows=(40, 50), cols=(5, 45))), expected(28, 7))


def test_an_odd_leftover_goes_below_and_right_as_pil_pastes():
    # 28 rows x 13 columns: no scaling, 15 columns left over: 7 to the left, 8 to the right
    out = fit_to_square(box(shape=(60, 60), rows=(10, 38), cols=(30, 43)))
    np.testing.assert_array_equal(out, expected(13, 28))
    assert out[:, 7].all() and not out[:, 6].any() and out[:, 19].all() and not out[:, 20].any()


def test_a_grey_background_is_levelled_to_black_and_said():
    notes = []
    out = fit_to_square(box(ground=0.3), notes)
    np.testing.assert_array_equal(out, expected(14, 28))
    assert notes == ["background 0.30 levelled to black"]


@pytest.mark.parametrize("ground", [0.0, 0.04])
def test_a_dark_background_is_left_as_it_is(ground):
    notes = []
    np.testing.assert_array_equal(fit_to_square(box(ground=ground), notes), expected(14, 28))
    assert notes == []


def test_a_stray_speck_is_not_part_of_the_object():
    img = box()
    img[95, 55] = 1.0  # one bright pixel far from the box: the 3x3 median removes it from the search
    np.testing.assert_array_equal(fit_to_square(img), expected(14, 28))


def test_a_faint_smudge_below_a_quarter_of_the_contrast_is_not_the_object():
    img = box()
    img[80:95, 40:55] = 0.2  # a large faint patch: under ground + 0.25 (top - ground)
    np.testing.assert_array_equal(fit_to_square(img), expected(14, 28))


def test_a_blank_image_stays_whole_and_black():
    out = fit_to_square(np.zeros((40, 20), np.float32))
    assert out.shape == (SIDE, SIDE) and not out.any()


def test_an_object_of_one_or_two_pixels_is_noise_to_the_median():
    out = fit_to_square(box(shape=(30, 30), rows=(10, 12), cols=(15, 16)))  # gone in the 3x3 median: no crop
    assert out.shape == (SIDE, SIDE) and out.max() > 0 and out[14, :].sum() < 2


# --- which files, and the conversions said for each ---------------------------------------------------------------

def save(path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((array * 255).astype(np.uint8)).save(path)


def test_image_files_takes_a_folders_images_a_glob_or_a_file_sorted(tmp_path):
    from softmax_lab.data.image_files import image_files

    for name in ("b.png", "a.JPG", "c.jpeg"):
        save(tmp_path / name, box())
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "d.png").mkdir()  # a folder named like an image is not one
    assert [p.name for p in image_files(str(tmp_path))] == ["a.JPG", "b.png", "c.jpeg"]
    assert [p.name for p in image_files(str(tmp_path / "*.png"))] == ["b.png"]
    assert image_files(str(tmp_path / "b.png")) == [tmp_path / "b.png"]


@pytest.mark.parametrize("spec", ["missing.png", "empty", "empty/*.png"])
def test_no_image_files_is_one_line_with_the_fix(tmp_path, spec):
    from softmax_lab.data.image_files import image_files
    from softmax_lab.errors import ConfigError

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^images=.*: no image files there\. Fix: a file, a folder of PNG/JPEG"):
        image_files(str(tmp_path / spec))


def test_a_28x28_image_on_black_is_taken_as_it_is(tmp_path):
    from softmax_lab.data.image_files import prepare_image

    img = box(shape=(28, 28), rows=(4, 20), cols=(6, 12))
    save(tmp_path / "x.png", img)
    grey, notes = prepare_image(tmp_path / "x.png")
    np.testing.assert_array_equal(grey, img)
    assert notes == []


def test_a_dark_object_on_white_is_inverted_cropped_and_said(tmp_path):
    from softmax_lab.data.image_files import prepare_image

    save(tmp_path / "x.png", 1.0 - box())  # a black box on white, 60 wide and 100 high
    grey, notes = prepare_image(tmp_path / "x.png")
    np.testing.assert_array_equal(grey, expected(14, 28))
    assert notes == ["inverted (light background)", "60x100 cropped to the object, scaled to 28x28"]


def test_a_blank_image_and_a_file_that_is_not_one_are_refused_by_name(tmp_path):
    from softmax_lab.data.image_files import ImageError, prepare_image

    save(tmp_path / "grey.png", np.full((30, 30), 0.5, np.float32))
    with pytest.raises(ImageError, match=r"^grey.png: a blank image \(one shade, 0.50\): nothing to classify$"):
        prepare_image(tmp_path / "grey.png")
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(ImageError, match=r"^x.png: not a readable image \("):
        prepare_image(tmp_path / "x.png")


# --- grey in [0, 1] from every kind of image file -----------------------------------------------------------------

def grey_of(img):
    from softmax_lab.data.image_files import _grey

    notes = []
    return _grey(img, notes), notes


def test_16_bit_pixels_are_scaled_not_clipped():
    from PIL import Image

    raw = np.zeros((4, 4), np.uint16)
    raw[1, 1], raw[2, 2] = 65535, 32768
    grey, notes = grey_of(Image.fromarray(raw))
    assert notes == ["I;16 pixels scaled from 0..65535"]
    np.testing.assert_allclose(grey, raw / 65535.0, rtol=1e-6)


@pytest.mark.parametrize(("peak", "top"), [(200, 255), (1000, 65535)])
def test_32_bit_integer_pixels_are_scaled_from_their_range(peak, top):
    from PIL import Image

    raw = np.zeros((4, 4), np.int32)
    raw[0, 0] = peak
    grey, notes = grey_of(Image.fromarray(raw, mode="I"))
    assert notes == [f"I pixels scaled from 0..{top}"] and grey[0, 0] == pytest.approx(peak / top)


@pytest.mark.parametrize(("peak", "top"), [(0.5, "1"), (4.0, "4")])
def test_float_pixels_are_scaled_from_one_or_their_peak(peak, top):
    from PIL import Image

    raw = np.zeros((4, 4), np.float32)
    raw[3, 3] = peak
    grey, notes = grey_of(Image.fromarray(raw, mode="F"))
    assert notes == [f"F pixels scaled from 0..{top}"] and grey[3, 3] == pytest.approx(peak / float(top))
    assert grey.dtype == np.float32 and grey.min() == 0.0


@pytest.mark.parametrize(("shade", "ground"), [(255, "black"), (0, "white")])
def test_a_transparent_background_is_made_the_colour_that_sets_the_object_off(shade, ground):
    from PIL import Image

    rgba = np.zeros((6, 6, 4), np.uint8)  # transparent everywhere
    rgba[2:4, 2:4] = (shade, shade, shade, 255)  # an opaque object
    grey, notes = grey_of(Image.fromarray(rgba, mode="RGBA"))
    light = shade == 255
    assert notes == [f"transparent background made {ground} ({'light' if light else 'dark'} object)"]
    assert grey[0, 0] == (0.0 if light else 1.0) and grey[2, 2] == shade / 255


def test_an_opaque_colour_image_is_its_luminance_with_nothing_said():
    from PIL import Image

    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 1] = (255, 0, 0)
    grey, notes = grey_of(Image.fromarray(rgb, mode="RGB"))
    assert notes == [] and grey[1, 1] == pytest.approx(76 / 255) and grey[0, 0] == 0.0
    opaque = np.full((4, 4, 4), 255, np.uint8)
    grey, notes = grey_of(Image.fromarray(opaque, mode="RGBA"))
    assert notes == [] and grey.min() == 1.0


# --- the edges of each rule ---------------------------------------------------------------------------------------

def test_the_output_is_float32():
    assert fit_to_square(box()).dtype == np.float32


def test_a_grey_background_inside_the_object_is_levelled_too():
    img = box(ground=0.3)
    img[30:40, 15:20] = 0.3  # a hole the colour of the background: black after levelling
    img[42:44, 12:14] = 0.0  # darker than the background: clipped to black, not negative
    out = fit_to_square(img)
    assert out.min() == 0.0 and out.max() == 1.0
    # the hole (rows 30..39, columns 15..19 of the 30 x 15 box, scaled by 28/30) is black in the box's middle
    assert out[13, 13] < 0.1 and out[21, 9] < 0.1 and out[5, 10] == 1.0  # (resampling rings a little)


def test_the_object_is_whatever_stands_a_quarter_of_the_contrast_above_the_ground():
    img = np.zeros((100, 60), np.float32)
    img[20:50, 10:25] = 0.6  # a dim object: the threshold is 0.15
    img[60:90, 40:55] = 0.2  # above it: part of the object's box
    out = fit_to_square(img)
    assert out[:, 20:].any() and fit_to_square(box()).shape == out.shape
    assert not np.array_equal(out, fit_to_square(box(rows=(20, 50), cols=(10, 25))))
    img[60:90, 40:55] = 0.26  # 0.26 on a bright object's black ground: above 0.25 of its contrast
    bright = img.copy()
    bright[20:50, 10:25] = 1.0
    assert not np.array_equal(fit_to_square(bright), expected(14, 28))


def test_a_two_pixel_wide_line_keeps_one_column_when_scaled_down():
    out = fit_to_square(box(shape=(80, 40), rows=(10, 66), cols=(20, 22)))  # 56 x 2: scale 0.5, 1 column wide
    assert out.shape == (SIDE, SIDE) and (out.sum(axis=0) > 0).sum() == 1


def test_a_textured_object_is_resampled_with_lanczos():
    from PIL import Image

    img = np.zeros((60, 60), np.float32)
    img[10:50, 10:50] = np.linspace(0.4, 1.0, 40, dtype=np.float32)[None, :]  # a ramp: filters differ on it
    crop = Image.fromarray((img[10:50, 10:50] * 255).astype(np.uint8)).resize((SIDE, SIDE), Image.LANCZOS)
    np.testing.assert_array_equal(fit_to_square(img), np.asarray(crop, dtype=np.float32) / 255)


def test_16_bit_pixels_are_scaled_from_65535_even_when_dim():
    from PIL import Image

    raw = np.zeros((4, 4), np.uint16)
    raw[0, 0] = 200
    grey, notes = grey_of(Image.fromarray(raw))
    assert notes == ["I;16 pixels scaled from 0..65535"] and grey[0, 0] == pytest.approx(200 / 65535)


@pytest.mark.parametrize(("peak", "top"), [(255, 255), (256, 65535)])
def test_32_bit_pixels_above_255_are_16_bit(peak, top):
    from PIL import Image

    raw = np.zeros((4, 4), np.int32)
    raw[0, 0] = peak
    assert grey_of(Image.fromarray(raw, mode="I"))[1] == [f"I pixels scaled from 0..{top}"]


def test_float_pixels_over_one_are_scaled_from_their_peak_and_negatives_clipped():
    from PIL import Image

    raw = np.zeros((4, 4), np.float32)
    raw[0, 0], raw[1, 1] = 1.5, -0.5
    grey, notes = grey_of(Image.fromarray(raw, mode="F"))
    assert notes == ["F pixels scaled from 0..1.5"] and grey[0, 0] == 1.0 and grey[1, 1] == 0.0


def test_a_grey_image_with_alpha_is_composited():
    from PIL import Image

    la = np.zeros((6, 6, 2), np.uint8)
    la[2:4, 2:4] = (255, 255)
    img = Image.fromarray(la, mode="LA")
    grey, notes = grey_of(img)
    assert notes == ["transparent background made black (light object)"] and grey[2, 2] == 1.0 and grey[0, 0] == 0.0
    assert grey.dtype == np.float32


def test_a_palette_image_with_a_transparent_index_is_composited():
    from PIL import Image

    img = Image.new("P", (6, 6), 0)
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    img.paste(1, (2, 2, 4, 4))
    img.info["transparency"] = 0
    grey, notes = grey_of(img)
    assert notes == ["transparent background made black (light object)"] and grey[2, 2] == 1.0


def test_a_mid_grey_object_just_over_half_is_light():
    from PIL import Image

    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[2:4, 2:4] = (128, 128, 128, 255)  # 128/255 > 0.5: light, so the ground is black
    assert grey_of(Image.fromarray(rgba, mode="RGBA"))[1] == ["transparent background made black (light object)"]


def test_a_one_pixel_image_is_blank_not_empty(tmp_path):
    from softmax_lab.data.image_files import ImageError, prepare_image

    save(tmp_path / "dot.png", np.ones((1, 1), np.float32))
    with pytest.raises(ImageError, match=r"^dot.png: a blank image \(one shade, 1.00\)"):
        prepare_image(tmp_path / "dot.png")


def test_a_levelled_background_is_said_for_the_file(tmp_path):
    from softmax_lab.data.image_files import prepare_image

    save(tmp_path / "x.png", box(ground=0.3))
    grey, notes = prepare_image(tmp_path / "x.png")
    assert notes == ["background 0.30 levelled to black", "60x100 cropped to the object, scaled to 28x28"]


def test_an_unreadable_file_says_what_pil_said(tmp_path):
    from softmax_lab.data.image_files import ImageError, prepare_image

    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(ImageError) as e:
        prepare_image(tmp_path / "x.png")
    assert str(e.value).startswith("x.png: not a readable image (cannot identify image file")


def test_no_image_files_gives_the_whole_fix(tmp_path):
    from softmax_lab.data.image_files import image_files
    from softmax_lab.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        image_files(str(tmp_path / "none.png"))
    assert str(e.value) == (f"images={tmp_path / 'none.png'}: no image files there. Fix: a file, a folder of PNG/JPEG "
                            "files, a glob in quotes ('photos/*.png'), or test:18 for official test images.")
