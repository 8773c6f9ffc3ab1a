#!/bin/bash
# Install what ucloud needs on this Debian 12 machine: the Debian packages in deploy/apt-packages.txt,
# pipenv, the project's environment (.venv/, exactly as Pipfile.lock pins it, with the packages the
# tests need) and the console site's browser parts. Idempotent: a second run installs nothing new.
# Needs root for apt.
#
#   deploy/install.sh            this checkout, for development, tests and deploy/local.sh
#   deploy/install.sh --system   ucloud for real hosts: a `ucloud` user, /opt/ucloud, the systemd
#                                units and /etc/ucloud/ucloud.conf (see deploy/system-install.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --system ]; then
    shift
    exec bash deploy/system-install.sh "$@"
fi
UCLOUD_SRC=$PWD
source deploy/install-lib.sh

install_packages
install_pipenv
python_env "$PWD" --dev
# The console site's browser parts (noVNC, xterm.js), pinned.
bash deploy/console-assets.sh
