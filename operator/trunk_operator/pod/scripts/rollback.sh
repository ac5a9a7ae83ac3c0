# shellcheck shell=sh
# Put the previous set back and reload, then print what Asterisk loaded (lib.sh). Over ARI
# the previous PJSIP file is pushed back first, so no id is in memory when a restored trunk
# file (a failed migration) brings it back. What is restored was verified when it was
# delivered: the listings suffice.
set -e
take_lock
previous="$STATE_DIR/previous"
test -d "$previous"
asterisk -rx 'core waitfullybooted' >/dev/null
if [ -z "$ARI_URL" ]; then
	restore="$STATE_DIR/restore"
	rm -rf "$restore" && cp -R "$previous" "$restore"
	rename_in "$restore"
else
	rm -f "$CONFIG_DIR/$OWNED_PJSIP" "$CONFIG_DIR/$OWNED_DIALPLAN"
	boot_epoch
	rm -rf "${PUSHED_DIR:?}/$PJSIP_DIR" && mkdir -p "$PUSHED_DIR"
	cp -R "$previous/pushed/$PJSIP_DIR" "$PUSHED_DIR/"
	ari_push "$PUSHED_DIR/$OWNED_PJSIP"
	cp -R "$previous/$PJSIP_DIR" "$previous/$EXTENSIONS_DIR" "$CONFIG_DIR/"
fi
if [ -f "$previous/hash" ]; then
	cp "$previous/hash" "$STATE_DIR/hash"
else
	rm -f "$STATE_DIR/hash"
fi
: >"$DETAIL_LIST"
: >"$CONTEXT_LIST"
# Over ARI, PJSIP is reloaded only to bring back a trunk file (a failed migration).
if [ -z "$ARI_URL" ] || [ -n "$(ls "$previous/$PJSIP_DIR")" ]; then
	reload_pjsip
fi
reload_dialplan
observe "$ARI_URL" whole
