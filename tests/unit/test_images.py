"""Images as people take them: EXIF-rotated phone photos, 16-bit files, huge files, many files at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from drywall_core.data.images import ImageTooLarge, open_rgb
from drywall_core.model.predict import output_name

ROTATE_90_CW = 6  # EXIF orientation: the camera held sideways


def _sideways(src: Path, dst: Path) -> Path:
    """A photo stored 300x170 that is displayed 170x300, as phones write them."""
    im = Image.open(src).convert("RGB").resize((300, 170))
    exif = Image.Exif()
    exif[0x0112] = ROTATE_90_CW
    im.save(dst, exif=exif)
    return dst


@pytest.fixture
def photo(synthetic_exports: list[Path]) -> Path:
    return sorted((synthetic_exports[0] / "train").glob("*.jpg"))[0]


def test_open_rgb_applies_exif_orientation(photo: Path, tmp_path: Path) -> None:
    path = _sideways(photo, tmp_path / "phone.jpg")
    assert Image.open(path).size == (300, 170), "stored sideways"
    shown = open_rgb(path)
    assert shown.size == (170, 300)
    assert np.array_equal(np.asarray(shown), np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")))


def test_predict_mask_has_the_displayed_size_and_orientation(cli, tiny_model_dir, photo: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    phone = _sideways(photo, tmp_path / "in" / "phone.jpg")
    upright = tmp_path / "in2" / "phone.png"
    upright.parent.mkdir()
    ImageOps.exif_transpose(Image.open(phone)).save(upright)  # the same pixels, rotated for real
    for src, out in ((phone, tmp_path / "a"), (upright, tmp_path / "b")):
        r = cli(
            "predict", src, "--prompt", "segment crack", "--model", tiny_model_dir, "--out", out, "--threshold", "0.5"
        )
        assert r.code == 0, r.err
    a = np.asarray(Image.open(tmp_path / "a" / output_name(phone, "segment crack")))
    b = np.asarray(Image.open(tmp_path / "b" / output_name(upright, "segment crack")))
    assert a.shape == (300, 170), "height x width of the displayed image"
    assert (a == b).mean() > 0.99, "the mask lies on the image as it is displayed"


def test_sixteen_bit_images_are_scaled_not_saturated(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (32, 1))
    path = tmp_path / "scan16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I"), "a real 16-bit file"
    got = np.asarray(open_rgb(path))[..., 0].astype(int)
    want = np.rint(ramp / 257).astype(int)
    assert np.abs(got - want).max() <= 1
    assert (got == 255).mean() < 0.01, "not saturated"


def test_float_images_are_scaled(tmp_path: Path) -> None:
    img = Image.fromarray(np.tile(np.linspace(0, 1, 64, dtype=np.float32), (8, 1)), mode="F")
    path = tmp_path / "f.tiff"
    img.save(path)
    got = np.asarray(open_rgb(path))[..., 0]
    assert got.min() == 0 and got.max() == 255


def test_pixel_limit_applies_to_every_reader(cli, tiny_model_dir, photo: Path, tmp_path: Path, monkeypatch) -> None:
    from drywall_core.base.config import get_settings
    from drywall_core.model.cache import load_rgb

    monkeypatch.setenv("DRYWALL_MAX_IMAGE_PIXELS", "1000")
    get_settings.cache_clear()
    with pytest.raises(ImageTooLarge, match="over the 1000-pixel limit"):
        load_rgb(photo)  # the activation cache's reader
    r = cli("predict", photo, "--prompt", "segment crack", "--model", tiny_model_dir, "--out", tmp_path / "o")
    assert r.code == 1 and f"{photo}: cannot read image" in r.err and "1000-pixel limit" in r.err


def test_predict_decodes_in_bounded_batches(tiny_model_dir, photo: Path, tmp_path: Path, monkeypatch) -> None:
    import drywall_core.model.predict as p
    from drywall_core.model.load import load_model

    srcs = []
    for i in range(11):
        srcs.append(tmp_path / f"img{i}.jpg")
        Image.open(photo).save(srcs[-1])
    live = {"open": 0, "done": 0, "peak": 0}
    real_open, real_probs = p.open_rgb, p.probabilities_for

    def counting_open(path):
        live["open"] += 1
        live["peak"] = max(live["peak"], live["open"] - live["done"])
        return real_open(path)

    def counting_probs(loaded, images, prompt):
        out = real_probs(loaded, images, prompt)
        live["done"] += len(images)
        return out

    monkeypatch.setattr(p, "open_rgb", counting_open)
    monkeypatch.setattr(p, "probabilities_for", counting_probs)
    report = p.predict_files(load_model(tiny_model_dir), srcs, "segment crack", tmp_path / "o", batch_size=4)
    assert len(report.written) == 11 and live["done"] == 11
    assert live["peak"] <= 4, f"{live['peak']} images held at once with batch size 4"


def test_two_images_on_one_output_name_are_refused(cli, tiny_model_dir, photo: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "site1" / "wall.jpg", tmp_path / "site2" / "wall.jpg"
    for x in (a, b):
        x.parent.mkdir()
        Image.open(photo).save(x)
    out = tmp_path / "o"
    r = cli("predict", a, b, "--prompt", "segment crack", "--model", tiny_model_dir, "--out", out)
    assert r.code == 2 and str(a) in r.err and str(b) in r.err, r.err
    assert not out.exists() or not list(out.iterdir()), "nothing written"
    r = cli("predict", a, a, "--prompt", "segment crack", "--model", tiny_model_dir, "--out", out)
    assert r.code == 0 and "wrote 1 masks" in r.out, "the same file twice is one mask, and says so"
    assert len(list(out.iterdir())) == 1


def test_an_animated_gif_among_field_photos_is_read_not_ignored(tmp_path) -> None:
    """Field photos in any format the reader opens are analysed (an animated GIF: its first frame)."""
    import numpy as np
    from PIL import Image

    from drywall_core.field.drift import find_images, image_features

    frames = [Image.fromarray(np.full((40, 60, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(tmp_path / "still.jfif", format="JPEG")
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(tmp_path / "IMG_0042", format="JPEG")
    (tmp_path / "notes.txt").write_text("not a photo")
    found = [p.name for p in find_images(tmp_path)]
    assert found == ["IMG_0042", "anim.gif", "still.jfif"], "a photo without an extension is read too"
    features = image_features(tmp_path / "anim.gif")
    assert features["width"] == 60 and abs(features["brightness_mean"] - 10 / 255) < 0.01, "the first frame"
