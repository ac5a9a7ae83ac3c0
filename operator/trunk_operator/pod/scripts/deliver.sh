# shellcheck shell=sh
# Deliver a file set: stage the tar from stdin, keep the previous set, swap, reload what
# changed (or push the PJSIP objects over ARI), then print what Asterisk loaded (lib.sh).
# Stdin: the gzip'd tar (TAR_SIZE bytes), the endpoint names to check in depth (DETAIL_SIZE),
# the contexts to check (CONTEXT_SIZE), then over ARI the pusher and its credentials line.
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
if [ -z "$ARI_URL" ]; then refuse_when_pushed; else boot_epoch; fi
only_loaded_before "$ARI_URL"
rm -rf "$previous" && mkdir -p "$previous/$PJSIP_DIR" "$previous/$EXTENSIONS_DIR"
cp "$STATE_DIR/hash" "$previous/hash" 2>/dev/null || true
set +e
if [ -z "$ARI_URL" ]; then keep_owned "$previous" copied; else keep_owned "$previous"; fi
set -e
if [ -z "$ARI_URL" ]; then
	rename_in "$staging"
else
	# The PJSIP file goes to PUSHED_DIR; `migrating`: pjsip.d/ had one of ours, whose objects
	# are unloaded (a reload without it) before the same ids are pushed.
	mkdir -p "$PUSHED_DIR/$PJSIP_DIR" "$previous/pushed/$PJSIP_DIR"
	migrating=$(ls "$previous/$PJSIP_DIR")
	mv "$PUSHED_DIR/$PJSIP_DIR"/* "$previous/pushed/$PJSIP_DIR/" 2>/dev/null || true
	if [ -d "$staging/$EXTENSIONS_DIR" ]; then cp -R "$staging/$EXTENSIONS_DIR" "$CONFIG_DIR/"; fi
	if [ -d "$staging/$PJSIP_DIR" ]; then cp -R "$staging/$PJSIP_DIR" "$PUSHED_DIR/"; fi
fi
echo "$DIGEST" >"$STATE_DIR/hash"
clock swapped
if [ -z "$ARI_URL" ]; then
	if [ -n "$RELOAD_PJSIP" ]; then reload_pjsip; fi
	if [ -n "$RELOAD_DIALPLAN" ]; then reload_dialplan; fi
else
	if [ -n "$migrating" ]; then
		section reload-migration
		asterisk -rx "$PJSIP_RELOAD" 2>&1
	fi
	if [ -n "$RELOAD_DIALPLAN" ]; then reload_dialplan; fi
	if [ -n "$RELOAD_PJSIP" ]; then
		ari_push "$PUSHED_DIR/$OWNED_PJSIP"
		light_after_push
	fi
fi
clock reloaded
observe "$ARI_URL" whole
clock read
