#!/bin/sh
# Fetch, unpack and verify the released visa archive; see scripts/download_weights.py --help.
exec python "$(dirname "$0")/download_weights.py" visa "$@"
