#!/usr/bin/env bash
# Installs Debian's dataset-fashion-mnist (the real Fashion-MNIST idx files, offline at run time).
# Without apt or root, lowssl falls back to torchvision's download on first use and says so.
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ] && [ -f "$DIR/t10k-labels-idx1-ubyte.gz" ]; then
    echo "Fashion-MNIST found in $DIR"
    exit 0
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
    echo "installed Debian's dataset-fashion-mnist into $DIR"
else
    echo "apt-get is not available or you are not root: lowssl will download Fashion-MNIST with" \
         "torchvision on first use (or set LOWSSL_FASHION_MNIST to a folder with the idx .gz files)"
fi
