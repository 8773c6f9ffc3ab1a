#!/bin/bash
# Run ucloud's whole test suite on this machine: installs what the tests need first (deploy/install.sh),
# then runs pytest, whose fixtures start the real services (etcd, …) on free ports. Extra arguments
# go to pytest, e.g. `bash deploy/test.sh -k follow -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
exec .venv/bin/pytest "$@"
