# shellcheck shell=sh
# The ARI delivery (pod/ari.py): the PJSIP file goes to PUSHED_DIR and the operator's steps
# push its objects that differ into Asterisk's memory; the dialplan stays a file, reloaded when it changes. The
# functions deliver.sh and rollback.sh call; files.sh has the same ones.

# `boot`: the record of what was pushed is of one Asterisk process.
before_change() {
	boot_epoch
	if [ -n "$RELOAD_PJSIP" ]; then check_record; fi
}

loaded_endpoints() {
	pushed_endpoints
}

keep_previous() {
	keep_owned "$1"
}

# `migrating`: pjsip.d/ had one of ours, whose objects are unloaded (a reload without it)
# before the same ids are pushed: an id both in a file and in memory can crash Asterisk.
swap_in() {
	mkdir -p "$PUSHED_DIR/$PJSIP_DIR" "$STATE_DIR/previous/pushed/$PJSIP_DIR"
	migrating=$(ls "$STATE_DIR/previous/$PJSIP_DIR")
	mv "$PUSHED_DIR/$PJSIP_DIR"/* "$STATE_DIR/previous/pushed/$PJSIP_DIR/" 2>/dev/null || true
	if [ -d "$1/$EXTENSIONS_DIR" ]; then cp -R "$1/$EXTENSIONS_DIR" "$CONFIG_DIR/"; fi
	if [ -d "$1/$PJSIP_DIR" ]; then cp -R "$1/$PJSIP_DIR" "$PUSHED_DIR/"; fi
}

apply_changes() {
	if [ -n "$migrating" ]; then
		section reload-migration
		asterisk -rx "$PJSIP_RELOAD" 2>&1
	fi
	if [ -n "$RELOAD_DIALPLAN" ]; then reload_dialplan; fi
	if [ -n "$RELOAD_PJSIP" ]; then
		ari_push
		light_after_push
	fi
}

# The previous PJSIP file's objects are pushed back (the steps the operator computed from its
# copy of the record) before a restored trunk file (a failed migration)
# could bring the same ids back from pjsip.d/.
restore_previous() {
	boot_epoch
	check_record
	rm -f "$CONFIG_DIR/$OWNED_PJSIP" "$CONFIG_DIR/$OWNED_DIALPLAN"
	rm -rf "${PUSHED_DIR:?}/$PJSIP_DIR" && mkdir -p "$PUSHED_DIR"
	cp -R "$1/pushed/$PJSIP_DIR" "$PUSHED_DIR/"
	ari_push
	cp -R "$1/$PJSIP_DIR" "$1/$EXTENSIONS_DIR" "$CONFIG_DIR/"
}

# PJSIP is reloaded only to bring back a trunk file (a failed migration).
reload_restored() {
	if [ -n "$(ls "$1/$PJSIP_DIR")" ]; then reload_pjsip; fi
	reload_dialplan
}
