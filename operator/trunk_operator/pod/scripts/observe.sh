# shellcheck shell=sh
# What the pod serves now (lib.sh's `observe`); nothing is changed. No lock: an observation
# that timed out would hold it and deliveries would wait behind its reads. One that overlaps
# a delivery reads a set in transition: the drift it reports brings a redelivery.
mkdir -p "$STATE_DIR"
read_probe
observe "$PUSHED" "$WHOLE_DIALPLAN"
