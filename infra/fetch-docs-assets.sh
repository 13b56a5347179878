#!/usr/bin/env bash
# Fetch the scripts, styles and fonts that Great Expectations' Data Docs load from CDNs, so the
# docs render offline: `drywall validate --report` copies them beside the docs and rewrites the
# links (drywall_core/data/docs_assets.py). Packages come from the npm registry with `npm pack`
# (versions pinned to what GX 1.24 references). Usage: infra/fetch-docs-assets.sh DEST
set -euo pipefail
dest=${1:?usage: fetch-docs-assets.sh DEST}
if ! command -v npm >/dev/null 2>&1; then
  echo "note: npm not found; Data Docs will load their styles and scripts from CDNs" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
packages=(jquery@3.7.1 bootstrap@4.3.1 popper.js@1.12.9 bootstrap-table@1.19.1 @forevolve/bootstrap-dark@1.1.0
  bootstrap-datepicker@1.9.0 @fortawesome/fontawesome-free@6.6.0 vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0)
(cd "$work" && npm pack --silent "${packages[@]}" >/dev/null)
stage="$dest.tmp.$$"
rm -rf "$stage" && mkdir -p "$stage"
take() {  # take TARBALL PATH_IN_PACKAGE TARGET
  mkdir -p "$(dirname "$stage/$3")"
  tar -xzf "$work/$1" -C "$work" "package/$2"
  mv "$work/package/$2" "$stage/$3"
  rm -rf "$work/package"
}
take jquery-3.7.1.tgz dist/jquery.min.js jquery/jquery.min.js
take bootstrap-4.3.1.tgz dist/css/bootstrap.min.css bootstrap/bootstrap.min.css
take bootstrap-4.3.1.tgz dist/js/bootstrap.min.js bootstrap/bootstrap.min.js
take popper.js-1.12.9.tgz dist/umd/popper.min.js popper/popper.min.js
take bootstrap-table-1.19.1.tgz dist/bootstrap-table.min.css bootstrap-table/bootstrap-table.min.css
take bootstrap-table-1.19.1.tgz dist/bootstrap-table.min.js bootstrap-table/bootstrap-table.min.js
take bootstrap-table-1.19.1.tgz dist/extensions/filter-control/bootstrap-table-filter-control.min.css \
  bootstrap-table/bootstrap-table-filter-control.min.css
take bootstrap-table-1.19.1.tgz dist/extensions/filter-control/bootstrap-table-filter-control.min.js \
  bootstrap-table/bootstrap-table-filter-control.min.js
take forevolve-bootstrap-dark-1.1.0.tgz dist/css/bootstrap-prefers-dark.css bootstrap-dark/bootstrap-prefers-dark.css
take bootstrap-datepicker-1.9.0.tgz dist/css/bootstrap-datepicker.min.css datepicker/bootstrap-datepicker.min.css
take bootstrap-datepicker-1.9.0.tgz dist/js/bootstrap-datepicker.min.js datepicker/bootstrap-datepicker.min.js
take fortawesome-fontawesome-free-6.6.0.tgz css/all.min.css fontawesome/css/all.min.css
take fortawesome-fontawesome-free-6.6.0.tgz webfonts fontawesome/webfonts
take vega-5.33.1.tgz build/vega.min.js vega/vega.min.js
take vega-lite-5.23.0.tgz build/vega-lite.min.js vega/vega-lite.min.js
take vega-embed-6.29.0.tgz build/vega-embed.min.js vega/vega-embed.min.js
rm -rf "$dest" && mv "$stage" "$dest"
echo "Data Docs assets in $dest ($(du -sh "$dest" | cut -f1))"
