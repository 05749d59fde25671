#!/bin/sh
# Fetch, unpack and verify the released mvtec3d archive; see scripts/download_weights.py --help.
exec python "$(dirname "$0")/download_weights.py" mvtec3d "$@"
