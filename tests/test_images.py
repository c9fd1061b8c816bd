import cv2
import numpy as np
import pytest
from PIL import Image

from icn_rt.data.images import read_image
from icn_rt.errors import InputError


def _rgb(h=9, w=7):
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_roundtrip(tmp_path):
    rgb = _rgb()
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)


def test_grey_rgba_palette_and_16bit(tmp_path):
    rgb = _rgb()
    grey = rgb[:, :, 0]
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(grey[:, :, None], 3, 2))

    rgba = np.concatenate([rgb, np.full((9, 7, 1), 17, np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)

    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png")[0, 1], [200, 100, 50])

    deep = (rgb.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "d.png"), cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_image(tmp_path / "d.png"), rgb)


@pytest.mark.parametrize("content, problem", [(b"", "empty"), (b"\x89PNG not really", "not a decodable image")])
def test_bad_files_name_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(InputError, match=problem) as e:
        read_image(path)
    assert str(path) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_viewers_do(tmp_path, orientation):
    """Phone photos store the pixels sideways and an EXIF tag says how to turn them: the
    decoded image is the turned one (PIL's exif_transpose is the reference), 8 orientations."""
    from PIL import ImageOps

    raw = _rgb(9, 7)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(raw).save(tmp_path / "phone.png", exif=exif)
    with Image.open(tmp_path / "phone.png") as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = read_image(tmp_path / "phone.png")
    assert got.shape == ((9, 7, 3) if orientation < 5 else (7, 9, 3))
    np.testing.assert_array_equal(got, expected)
    if orientation == 6:  # "rotate 90° clockwise to display"
        np.testing.assert_array_equal(got, np.rot90(raw, k=-1))
