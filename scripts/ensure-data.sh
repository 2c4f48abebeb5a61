#!/usr/bin/env bash
# Make sure Fashion-MNIST is present. Usage: scripts/ensure-data.sh [--required]
# Looks in $RTT_DATA/fashion-mnist, then /usr/share/datasets/fashion-mnist (Debian's
# dataset-fashion-mnist), and installs that package with apt-get when running as root on Debian.
required=0; [ "${1:-}" = "--required" ] && required=1
have() { ls "$1"/train-images-idx3-ubyte* >/dev/null 2>&1; }
if [ -n "${RTT_DATA:-}" ] && have "$RTT_DATA/fashion-mnist"; then exit 0; fi
if have /usr/share/datasets/fashion-mnist; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1
    if have /usr/share/datasets/fashion-mnist; then exit 0; fi
fi
msg="Fashion-MNIST not found in \$RTT_DATA/fashion-mnist or /usr/share/datasets/fashion-mnist: run 'sudo apt-get install dataset-fashion-mnist', or put the four IDX files (train-images-idx3-ubyte.gz, ...) in a folder DIR/fashion-mnist and set RTT_DATA=DIR."
if [ $required = 1 ]; then echo "error: $msg" >&2; exit 1; fi
echo "warning: $msg Tests that need it will be skipped." >&2
exit 0
