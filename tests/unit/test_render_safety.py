"""Whatever `drywall validate` passes, `drywall masks` renders correctly; what it cannot render, both refuse.

Each fault below passed validation before and then mis-rendered or crashed the renderer. Now the
validator names it (exit 1) and the renderer refuses it by name before writing anything (exit 2),
because both use the same rules (``drywall_core.data.annotations``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import edit_coco

ANN = "train/_annotations.coco.json"


def _first(coco: dict) -> tuple[dict, dict]:
    ann = next(a for a in coco["annotations"] if a["segmentation"])
    return ann, next(i for i in coco["images"] if i["id"] == ann["image_id"])


def _rle_of_wrong_size(coco: dict) -> None:
    from pycocotools import mask as mu

    ann, img = _first(coco)
    rle = mu.encode(np.asfortranarray(np.ones((img["height"] + 10, img["width"]), np.uint8)))
    ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}


def _rle_garbage(coco: dict) -> None:
    ann, img = _first(coco)
    ann["segmentation"] = {"size": [img["height"], img["width"]], "counts": "\x7f\x7fgarbage~~~"}


def _rle_overflow(coco: dict) -> None:
    ann, img = _first(coco)
    ann["segmentation"] = {"size": [img["height"], img["width"]], "counts": [0, img["height"] * img["width"] * 4]}


def _drop_width(coco: dict) -> None:
    del _first(coco)[1]["width"]


def _width_as_string(coco: dict) -> None:
    img = _first(coco)[1]
    img["width"] = str(img["width"])


FAULTS: dict[str, tuple[Callable[[dict], None], str, bool]] = {
    # name: (edit, text of the failed expectation, does the renderer need to refuse it too)
    "rle-size-differs": (_rle_of_wrong_size, "segmentation cannot be rendered", True),
    "rle-garbage-counts": (_rle_garbage, "segmentation cannot be rendered", True),
    "rle-counts-overflow": (_rle_overflow, "segmentation cannot be rendered", True),
    "image-without-width": (_drop_width, "image width/height missing", True),
    "width-as-string": (_width_as_string, "image width/height missing", True),
    "image-entry-not-object": (lambda c: c["images"].append(42), "entry unusable", True),
    "null-annotation": (lambda c: c["annotations"].append(None), "entry unusable", True),
    "null-segmentation-no-bbox": (
        lambda c: _first(c)[0].update(segmentation=None, bbox=None),
        "segmentation cannot be rendered",
        True,
    ),
    "absolute-file-name": (
        lambda c: _first(c)[1].update(file_name="/etc/hostname"),
        "file_name is not a relative path inside the export folder",
        False,
    ),
    "dotdot-file-name": (
        lambda c: _first(c)[1].update(file_name="../../outside.jpg"),
        "file_name is not a relative path inside the export folder",
        False,
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_validate_and_masks_refuse_what_cannot_render(cli, synthetic_cracks: Path, tmp_path: Path, fault) -> None:
    edit, text, render_refuses = FAULTS[fault]
    ann_file = synthetic_cracks / ANN
    edit_coco(synthetic_cracks, "train", edit)
    r = cli("validate", synthetic_cracks)
    assert r.code == 1, r.out + r.err
    assert any(ln.startswith(f"{ann_file}: {text}") for ln in r.err.splitlines()), r.err
    assert "unexpected" not in r.err
    out = tmp_path / "masks"
    m = cli("masks", synthetic_cracks, "--out", out)
    assert "unexpected" not in m.err
    if render_refuses:
        assert m.code == 2 and f"{ann_file}: cannot render masks" in m.err, m.err
        assert not list(out.rglob("*.png")), "nothing is written when the input cannot be rendered"
    else:
        assert m.code == 0, m.err


def test_symlink_leaving_the_export_is_refused(cli, synthetic_cracks: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.jpg"
    Image.new("RGB", (8, 8)).save(outside)
    img = _first(json.loads((synthetic_cracks / ANN).read_text()))[1]
    link = synthetic_cracks / "train" / img["file_name"]
    link.unlink()
    os.symlink(outside, link)
    r = cli("validate", synthetic_cracks)
    assert r.code == 1 and "file_name is not a relative path inside the export folder" in r.err
    assert img["file_name"] in r.err


def test_empty_split_is_a_failed_check_not_a_crash(cli, synthetic_cracks: Path) -> None:
    (synthetic_cracks / "test").mkdir()
    empty = synthetic_cracks / "test" / "_annotations.coco.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "crack"}]}))
    r = cli("validate", synthetic_cracks)
    assert r.code == 1 and f"{empty}: split lists no images" in r.err, r.err


def test_two_images_with_one_stem_are_refused_by_name(cli, synthetic_cracks: Path, tmp_path: Path) -> None:
    coco = json.loads((synthetic_cracks / ANN).read_text())
    src = coco["images"][0]
    twin = {**src, "id": 10_000, "file_name": Path(src["file_name"]).with_suffix(".png").name}
    Image.open(synthetic_cracks / "train" / src["file_name"]).save(synthetic_cracks / "train" / twin["file_name"])
    edit_coco(synthetic_cracks, "train", lambda c: c["images"].append(twin))
    r = cli("validate", synthetic_cracks)
    assert r.code == 1 and "two images share a file stem" in r.err and twin["file_name"] in r.err, r.err
    m = cli("masks", synthetic_cracks, "--out", tmp_path / "m")
    assert m.code == 2 and src["file_name"] in m.err and twin["file_name"] in m.err, m.err


def test_valid_rle_still_renders(cli, synthetic_cracks: Path, tmp_path: Path) -> None:
    """The new RLE rules accept real RLE (compressed and uncompressed) and render it exactly."""
    from pycocotools import mask as mu

    coco = json.loads((synthetic_cracks / ANN).read_text())
    ann, img = _first(coco)
    want = np.zeros((img["height"], img["width"]), np.uint8)
    want[5:40, 10:30] = 1
    rle = mu.encode(np.asfortranarray(want))

    def set_rle(c: dict) -> None:
        a, i = _first(c)
        a["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        others = [x for x in c["annotations"] if x["image_id"] == i["id"] and x is not a]
        for x in others:
            c["annotations"].remove(x)

    edit_coco(synthetic_cracks, "train", set_rle)
    assert cli("validate", synthetic_cracks).code == 0
    out = tmp_path / "m"
    assert cli("masks", synthetic_cracks, "--out", out).code == 0
    got = np.asarray(Image.open(out / "train" / f"{Path(img['file_name']).stem}.png")) > 0
    assert np.array_equal(got, want.astype(bool))
