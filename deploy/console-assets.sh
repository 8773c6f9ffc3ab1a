#!/bin/bash
# Fetch the console site's browser parts into ucloud_api/site/vendor/: noVNC (the screen) and xterm.js
# (the serial terminal), as the npm registry publishes them, pinned by version and SHA-256 so that what
# the browser runs is exactly what was reviewed. No Node.js needed: a tarball is all they are.
# Idempotent: a second run checks the stamp and fetches nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

# One run at a time (a lock on this script's own file): two at once, as two test workers starting
# together, would both fetch and swap the same directories over each other.
exec 9<"$0"
flock 9

vendor=ucloud_api/site/vendor
# name  version  tarball url  sha256  what to keep (paths inside the tarball's package/)
# (The registry publishes each tarball's sha512 as dist.integrity — novnc 1.7.0: sha512-ucEJOx4T2avIRCleod…;
# xterm 6.0.0: sha512-TQwDdQGtwwDt+2cgKD… — and the SHA-256 pinned here is of the very same file.)
assets=(
    "novnc 1.7.0 https://registry.npmjs.org/@novnc/novnc/-/novnc-1.7.0.tgz"
    "32689f18d6abe96bc6530828a6bd0b9ae33bda07c083a6575ed255b5a8f2e903 core vendor LICENSE.txt"
    "xterm 6.0.0 https://registry.npmjs.org/@xterm/xterm/-/xterm-6.0.0.tgz"
    "908e66e04af6c8dc6b00dd3b54de088e2e81e5ed866284fd6c2fb3c2d1c7a3f6 lib/xterm.mjs css/xterm.css LICENSE"
)

for ((i = 0; i < ${#assets[@]}; i += 2)); do
    read -r name version url <<<"${assets[i]}"
    read -r sha256 keep <<<"${assets[i + 1]}"
    stamp="$vendor/$name/.version"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$version $sha256" ]; then
        continue
    fi
    echo "console-assets: $name $version"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    curl -fsSL --retry 3 -o "$tmp/package.tgz" "$url"
    if ! echo "$sha256  $tmp/package.tgz" | sha256sum -c --quiet -; then
        echo "console-assets: $url is not the reviewed $name $version (SHA-256 differs): refusing it" >&2
        exit 1
    fi
    tar -xzf "$tmp/package.tgz" -C "$tmp"
    # Built beside, then swapped in: an API that serves the old files meanwhile never sees half of them.
    mkdir -p "$vendor" "$tmp/out"
    for path in $keep; do
        mkdir -p "$tmp/out/$(dirname "$path")"
        cp -r "$tmp/package/$path" "$tmp/out/$path"
    done
    echo "$version $sha256" >"$tmp/out/.version"
    rm -rf "${vendor:?}/$name.old"
    [ ! -e "$vendor/$name" ] || mv "$vendor/$name" "$vendor/$name.old"
    mv "$tmp/out" "$vendor/$name"
    rm -rf "${vendor:?}/$name.old" "$tmp"
    trap - EXIT
done
