# shellcheck shell=sh
# The file delivery: the set is renamed into pjsip.d/ and extensions.d/, and what changed is
# reloaded. The functions deliver.sh and rollback.sh call; ari.sh has the same ones.

before_change() {
	refuse_when_pushed
}

loaded_endpoints() {
	asterisk -rx 'pjsip list endpoints' | sed -n 's/^ *Endpoint:  *\([^ /<][^ /]*\).*/\1/p'
}

# Copied, not moved: the files stay in place until the new set replaces them by rename.
keep_previous() {
	keep_owned "$1" copied
}

swap_in() {
	rename_in "$1"
}

apply_changes() {
	if [ -n "$RELOAD_PJSIP" ]; then reload_pjsip; fi
	if [ -n "$RELOAD_DIALPLAN" ]; then reload_dialplan; fi
}

restore_previous() {
	restore="$STATE_DIR/restore"
	rm -rf "$restore" && cp -R "$1" "$restore"
	rename_in "$restore"
}

reload_restored() {
	reload_pjsip
	reload_dialplan
}
