# shellcheck shell=sh
# Deliver a file set: stage the tar from stdin, keep the previous set, swap it in, apply the
# changes (the strategy's: files.sh reloads, ari.sh pushes), then print what Asterisk loaded.
# Stdin: the gzip'd tar (TAR_SIZE bytes), the endpoint names to check in depth (DETAIL_SIZE),
# the contexts to check (CONTEXT_SIZE), then what the strategy reads (ari.sh: the pusher).
# Asterisk reads the files only when told to reload: never half a set.
set -e
take_lock
clock start
staging="$STATE_DIR/staging"
previous="$STATE_DIR/previous"
mkdir -p "$STATE_DIR" "$CONFIG_DIR/$PJSIP_DIR" "$CONFIG_DIR/$EXTENSIONS_DIR"
rm -rf "$staging" && mkdir -p "$staging"
head -c "$TAR_SIZE" | tar -xzf - -C "$staging"
read_probe
# A reload asked of an Asterisk still starting (a restarted container) is ignored.
asterisk -rx 'core waitfullybooted' >/dev/null
before_change
only_loaded_before
rm -rf "$previous" && mkdir -p "$previous/$PJSIP_DIR" "$previous/$EXTENSIONS_DIR"
cp "$STATE_DIR/hash" "$previous/hash" 2>/dev/null || true
set +e
keep_previous "$previous"
set -e
swap_in "$staging"
echo "$DIGEST" >"$STATE_DIR/hash"
clock swapped
apply_changes
clock reloaded
observe "$PUSHED" whole
clock read
