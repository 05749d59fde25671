#!/bin/sh
# Fetch, unpack and verify the released fg_masks archive; see scripts/download_weights.py --help.
exec python "$(dirname "$0")/download_weights.py" fg_masks "$@"
