#!/bin/bash
# Install what ucloud needs on this Debian 12 machine: the Debian packages in deploy/apt-packages.txt,
# pipenv, the project's environment (.venv/, exactly as Pipfile.lock pins it) and the console site's
# browser parts. Idempotent: a second run installs nothing new. Needs root for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t packages < <(grep -v '^\s*#' deploy/apt-packages.txt | grep -v '^\s*$')
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install: apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Recommends would pull GTK, mesa and ffmpeg into a server (LAB.md).
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v pipenv >/dev/null; then
    echo "install: pipenv"
    python3 -m pip install -q pipenv 2>/dev/null || python3 -m pip install -q --break-system-packages pipenv
    hash -r
fi
PIPENV=$(command -v pipenv || echo "python3 -m pipenv")

echo "install: Python environment in .venv/ (from Pipfile.lock)"
export PIPENV_VENV_IN_PROJECT=1 PIPENV_NOSPIN=1 PIPENV_VERBOSITY=-1
$PIPENV sync --dev >/dev/null

# The console site's browser parts (noVNC, xterm.js), pinned.
bash deploy/console-assets.sh

# Ceph's Python bindings are Debian's (not on PyPI), built for this CPython 3.11: link just them
# into the environment rather than exposing all of Debian's packages to it.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for module in rados rbd; do
    so=/usr/lib/python3/dist-packages/$module.cpython-311-x86_64-linux-gnu.so
    [ -e "$so" ] && ln -sf "$so" "$site/"
done
