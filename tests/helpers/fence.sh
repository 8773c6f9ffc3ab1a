#!/bin/bash
# A fence command for tests: records its arguments and the time in $FENCE_LOG, exits $FENCE_EXIT.
echo "$* $(date +%s.%N)" >> "${FENCE_LOG:?}"
exit "${FENCE_EXIT:-0}"
