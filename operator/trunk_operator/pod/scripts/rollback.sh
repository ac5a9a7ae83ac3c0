# shellcheck shell=sh
# Put the previous set back (the strategy's `restore_previous`) and reload it, then print what
# Asterisk loaded. What is restored was verified when it was delivered: the listings suffice.
set -e
take_lock
previous="$STATE_DIR/previous"
test -d "$previous"
asterisk -rx 'core waitfullybooted' >/dev/null
restore_previous "$previous"
if [ -f "$previous/hash" ]; then
	cp "$previous/hash" "$STATE_DIR/hash"
else
	rm -f "$STATE_DIR/hash"
fi
: >"$DETAIL_LIST"
: >"$CONTEXT_LIST"
reload_restored "$previous"
observe "$PUSHED" whole
