# Shared by deploy/install.sh (a development checkout) and deploy/system-install.sh (real hosts):
# source it, then call what you need. Needs root for apt.

# The Debian packages in deploy/apt-packages.txt that are not installed yet.
install_packages() {
    local packages missing=() pkg
    mapfile -t packages < <(grep -v '^\s*#' "$UCLOUD_SRC/deploy/apt-packages.txt" | grep -v '^\s*$')
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
}

# pipenv itself; sets PIPENV to the command that runs it.
install_pipenv() {
    if ! command -v pipenv >/dev/null; then
        echo "install: pipenv"
        python3 -m pip install -q pipenv 2>/dev/null || python3 -m pip install -q --break-system-packages pipenv
        hash -r
    fi
    PIPENV=$(command -v pipenv || echo "python3 -m pipenv")
}

# python_env DIR [--dev]: DIR/.venv exactly as DIR/Pipfile.lock pins it, with Debian's Ceph bindings.
python_env() {
    local dir=$1 dev=${2:-} site module so
    echo "install: Python environment in $dir/.venv/ (from Pipfile.lock${dev:+, with the dev packages})"
    (cd "$dir" && PIPENV_VENV_IN_PROJECT=1 PIPENV_NOSPIN=1 PIPENV_VERBOSITY=-1 PIPENV_IGNORE_VIRTUALENVS=1 \
        $PIPENV sync $dev >/dev/null)
    # Ceph's Python bindings are Debian's (not on PyPI), built for this CPython 3.11: link just them
    # into the environment rather than exposing all of Debian's packages to it.
    site=$("$dir/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    for module in rados rbd; do
        so=/usr/lib/python3/dist-packages/$module.cpython-311-x86_64-linux-gnu.so
        [ -e "$so" ] && ln -sf "$so" "$site/"
    done
    return 0
}
