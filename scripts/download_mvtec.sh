#!/bin/sh
# Fetch, unpack and verify the released mvtec archive; see scripts/download_weights.py --help.
exec python "$(dirname "$0")/download_weights.py" mvtec "$@"
