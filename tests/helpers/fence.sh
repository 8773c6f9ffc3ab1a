#!/bin/bash
# A fence command for tests: records its arguments and the time in $FENCE_LOG (after $FENCE_SLEEP
# seconds, default 0), exits $FENCE_EXIT.
sleep "${FENCE_SLEEP:-0}"
echo "$* $(date +%s.%N)" >> "${FENCE_LOG:?}"
exit "${FENCE_EXIT:-0}"
