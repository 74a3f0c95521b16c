#!/usr/bin/env bash
# Installs Detectron2 0.6's Python package into the active environment.
#
# No Detectron2 wheel exists on any registry we reach. The `pb1-detectron2==0.6` sdist holds
# Detectron2 0.6's Python package without its C++ sources, so it cannot be built; we download it
# (hash-pinned), and copy its `detectron2/` package into site-packages. The ops that needed the
# compiled extension are listed and guarded by `detection/compat.py`, applied before the first
# Detectron2 import. Where a full Detectron2 with compiled ops is already importable (built from
# source), it is used unchanged and nothing is installed.
set -euo pipefail
PYTHON="${PYTHON:-python}"
SDIST="pb1-detectron2==0.6"
SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

if "$PYTHON" -c "import detectron2._C" 2>/dev/null; then
    echo "detectron2 with compiled ops found: using it unchanged"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "$SDIST --hash=sha256:$SHA256" > "$work/requirements.txt"
# The sdist's setup.py imports torch, hence --no-build-isolation (torch is already installed).
"$PYTHON" -m pip download --quiet --no-deps --no-build-isolation --no-binary :all: \
    --require-hashes -r "$work/requirements.txt" -d "$work"
tar -xzf "$work"/pb1-detectron2-0.6.tar.gz -C "$work"
site="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -rf "$site/detectron2"
cp -r "$work/pb1-detectron2-0.6/detectron2" "$site/detectron2"
echo "installed detectron2 0.6 (Python package, no compiled ops) into $site"
