"""Great Expectations Data Docs that render offline.

GX's pages load Bootstrap, jQuery, bootstrap-table, Font Awesome and Vega from CDNs (and the GX
logo from S3): without internet the index table is empty and no page has styling. The files are
fetched once at setup (``infra/fetch-docs-assets.sh``, from the npm registry); here they are copied
beside a docs site and every CDN reference is rewritten to a relative path.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

VENDOR = "static/vendor"
CDN: dict[str, str] = {  # URL in GX 1.24's templates -> file under the assets folder
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/jquery.min.js",
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap/bootstrap.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper/popper.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css": (
        "bootstrap-table/bootstrap-table-filter-control.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css": (
        "bootstrap-table/bootstrap-table-filter-control.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js": (
        "bootstrap-table/bootstrap-table-filter-control.min.js"
    ),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": (
        "bootstrap-dark/bootstrap-prefers-dark.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": (
        "datepicker/bootstrap-datepicker.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": (
        "datepicker/bootstrap-datepicker.min.js"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "fontawesome/css/all.min.css",
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega/vega-embed.min.js",
}
GX_LOGO = re.compile(r"https://great-expectations-web-assets\.s3[^\"']*/logo-long\.png[^\"']*")
_REF = re.compile(r"""(?P<attr>(?:src|href)=["'])(?P<url>https?://[^"']+)(?P<end>["'])""")


def assets_complete(assets: Path) -> bool:
    return all((assets / rel).is_file() for rel in set(CDN.values()))


def localize(docs_dir: Path, assets: Path) -> int:
    """Copy the assets into ``docs_dir/static/vendor`` and point every page at them; returns how many
    references were rewritten. Without the assets the pages keep their CDN links (and a warning says so)."""
    if not assets_complete(assets):
        log.warning("Data Docs assets not found in %s: the docs load their styles from CDNs (run make setup)", assets)
        return 0
    shutil.copytree(assets, docs_dir / VENDOR, dirs_exist_ok=True)
    rewritten = 0
    for page in docs_dir.rglob("*.html"):
        vendor = Path(os.path.relpath(docs_dir / VENDOR, page.parent)).as_posix()
        logo = Path(os.path.relpath(docs_dir / "static" / "images" / "logo-long.png", page.parent)).as_posix()
        html = page.read_text(encoding="utf-8")
        new, n = _REF.subn(lambda m, v=vendor: _local(m, v), html)
        new, k = GX_LOGO.subn(logo, new)
        if new != html:
            page.write_text(new, encoding="utf-8")
            rewritten += sum(1 for m in _REF.finditer(html) if m["url"] in CDN) + k
    return rewritten


def _local(m: re.Match[str], vendor: str) -> str:
    local = CDN.get(m["url"])
    return f"{m['attr']}{vendor}/{local}{m['end']}" if local else m[0]
