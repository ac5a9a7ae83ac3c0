# shellcheck shell=sh
# Functions the pod scripts share (deliver.sh, rollback.sh, observe.sh). The operator sends
# them in one `sh -c` after the parameters (pod/shell.py sets every variable in CAPITALS),
# followed by a delivery strategy's functions (files.sh or ari.sh) and the script.
# Output goes in sections, each opened by a "$MARK<name>" line (pod/channel.py reads them).

OWNED_PJSIP="$PJSIP_DIR/$POD_FILE"
OWNED_DIALPLAN="$EXTENSIONS_DIR/$POD_FILE"

section() {
	echo "$MARK$1"
}

# When the script reached a phase, in ns: the operator's log says where a delivery's time went.
clock() {
	section "clock:$1"
	date +%s%N
}

# One delivery (or rollback) at a time in a pod: one whose exec timed out still runs there,
# and the retry must not stage, push or read beside it. flock(1): util-linux, busybox.
take_lock() {
	mkdir -p "$STATE_DIR"
	exec 9>"$STATE_DIR/lock"
	flock -w "$LOCK_WAIT" 9 || {
		echo 'another delivery still runs in this pod (an earlier exec that timed out)' >&2
		exit 4
	}
}

# The names to read in depth, then the contexts to check, one per line, from stdin.
read_probe() {
	head -c "$DETAIL_SIZE" >"$DETAIL_LIST"
	head -c "$CONTEXT_SIZE" >"$CONTEXT_LIST"
}

# Deal the lines of $1 round robin into $2<0..READERS-1> (only those that get a line exist).
# Not `split -n l/4`: coreutils 9.10 fails on a one-line file.
deal() {
	i=0
	while read -r line; do
		echo "$line" >>"$2$((i % READERS))"
		i=$((i + 1))
	done <"$1"
}

# File pods: the set in $1 (staged, or a previous one) in place by rename, which is atomic: a
# reload at any moment, ours or anyone's, reads the old file or the new, never none. Then the
# owned files that set does not have go.
rename_in() {
	names=$(
		cd "$1" || exit 0
		ls -d "$OWNED_PJSIP" "$OWNED_DIALPLAN" 2>/dev/null || true
	)
	for f in $names; do
		mv "$1/$f" "$CONFIG_DIR/$f"
	done
	(
		cd "$CONFIG_DIR" || exit 0
		ls -d "$OWNED_PJSIP" "$OWNED_DIALPLAN" 2>/dev/null || true
	) |
		grep -vxF "$names" | while read -r f; do rm -f "$CONFIG_DIR/$f"; done
}

# Our files into the previous set $1; with $2 (file pods) copied, so they stay in place until
# the new set replaces them by rename. Failures are the caller's to ignore (set +e).
keep_owned() {
	for f in "$OWNED_PJSIP" "$OWNED_DIALPLAN"; do
		if [ -e "$CONFIG_DIR/$f" ]; then
			if [ -n "$2" ]; then
				cp -p "$CONFIG_DIR/$f" "$1/${f%%/*}/"
			else
				mv "$CONFIG_DIR/$f" "$1/${f%%/*}/"
			fi
		fi
	done
}

reload_pjsip() {
	section "reload-$PJSIP_DIR"
	asterisk -rx "$PJSIP_RELOAD" 2>&1
}

reload_dialplan() {
	section "reload-$EXTENSIONS_DIR"
	asterisk -rx "$DIALPLAN_RELOAD" 2>&1
}

# `boot`: when this Asterisk started, in epoch seconds (to the second: the checks allow for
# the two reads' jitter). Objects pushed over ARI live as long as that process.
boot_epoch() {
	uptime=$(asterisk -rx 'core show uptime seconds' |
		sed -n 's/^System uptime: *\([0-9]*\).*/\1/p')
	boot=$(($(date +%s) - uptime))
}

# True when the record of what was pushed is of this Asterisk process (`boot` set before).
# Call it as a condition only.
given_to_this_asterisk() {
	had=$(sed -n '1s/^boot //p' "$STATE_DIR/pushed.state" 2>/dev/null)
	[ -n "$had" ] && [ $((boot - had)) -le 2 ] && [ $((had - boot)) -le 2 ]
}

# The endpoints this Asterisk process was given over ARI (none after a restart). The record
# is appended to: an endpoint's last line says its state.
pushed_endpoints() {
	if given_to_this_asterisk; then
		awk -F'\t' '$1 == "endpoint" { state[$2] = $3 }
			END { for (e in state) if (state[e] != "-" && state[e] != "gone") print e }' \
			"$STATE_DIR/pushed.state"
	fi
}

# A file delivery stops (exit 3) when this Asterisk holds pushed objects: the file's ids would
# be in two stores, which can crash it. A record of an earlier start is removed.
refuse_when_pushed() {
	if [ -e "$STATE_DIR/pushed.state" ]; then
		boot_epoch
		if given_to_this_asterisk; then
			echo 'this Asterisk holds trunks pushed over ARI: restart its container to deliver them as files again' >&2
			exit 3
		fi
		rm -rf "$STATE_DIR/pushed.state" "$PUSHED_DIR"
	fi
}

# Keep in DETAIL_LIST the endpoints Asterisk has before this change (the strategy's
# `loaded_endpoints`). Only an object that exists can be kept at an old version; a new one is
# there as rendered or not at all, which the listings show. ADDED marks that some are new (or
# too many to read in depth), so the listings of every type are read.
only_loaded_before() {
	before="$STATE_DIR/loaded-before"
	rm -f "$ADDED"
	[ -s "$DETAIL_LIST" ] || return 0
	loaded_endpoints >"$before"
	grep -Fx -f "$before" "$DETAIL_LIST" >"$before.changed" || true
	[ "$(wc -l <"$before.changed")" = "$(wc -l <"$DETAIL_LIST")" ] || touch "$ADDED"
	mv "$before.changed" "$DETAIL_LIST"
	if [ "$(wc -l <"$DETAIL_LIST")" -gt "$DETAILS_AT_MOST" ]; then
		touch "$ADDED"
		head -n "$DETAILS_AT_MOST" "$DETAIL_LIST" >"$before.first"
		mv "$before.first" "$DETAIL_LIST"
	fi
}

# The record of what this Asterisk process was given over ARI, by its token: its first line
# and its length, or "none" when it is of another process (or there is none). `boot` set before.
record_token() {
	if given_to_this_asterisk; then
		echo "$(head -n 1 "$STATE_DIR/pushed.state") $(($(wc -l <"$STATE_DIR/pushed.state")))"
	else
		echo none
	fi
}

# The operator computed its steps from its copy of the record (EXPECT_RECORD, its token). A
# pod whose record is another changes nothing: it prints the record (nothing when it is of
# another Asterisk process) and the PJSIP file last pushed, and exits 5; the operator computes the
# steps again from them (pod/ari_plan.py), with the pushed file before the last delivery.
check_record() {
	[ "$(record_token)" = "$EXPECT_RECORD" ] && return 0
	section ari-record-dump
	if given_to_this_asterisk; then cat "$STATE_DIR/pushed.state"; fi
	section ari-pushed-file
	cat "$PUSHED_DIR/$OWNED_PJSIP" 2>/dev/null || true
	section ari-previous-file
	cat "$STATE_DIR/previous/pushed/$OWNED_PJSIP" 2>/dev/null || true
	exit 5
}

# Run the ARI executor: it comes first on stdin (PUSHER_SIZE bytes), then its credentials
# line and its steps (OPS_SIZE bytes), which it reads itself. Its report is kept in `pushed`;
# then the objects it left unknown and the record's new token.
ari_push() {
	section ari
	head -c "$PUSHER_SIZE" >"$STATE_DIR/ari-push.pl"
	fresh=1
	if given_to_this_asterisk; then fresh=; fi
	rm -f "$STATE_DIR/ari-left"
	pushed=$(perl "$STATE_DIR/ari-push.pl" "$ARI_URL" "$STATE_DIR/pushed.state" "$boot" \
		"$fresh" "$OPS_SIZE" "$STATE_DIR/ari-left" 2>&1)
	echo "$pushed"
	if [ -n "$COMPACT" ] && given_to_this_asterisk; then compact_record; fi
	section ari-left
	cat "$STATE_DIR/ari-left" 2>/dev/null || true
	section ari-record
	record_token
}

# The record written whole, each object's last line kept (the operator asks for it when a
# quarter of the record would be lines a later one overrides).
compact_record() {
	awk -F'\t' 'NR == 1 { print; next } { state[$1 FS $2] = $3 }
		END { for (k in state) if (state[k] != "gone") print k FS state[k] }' \
		"$STATE_DIR/pushed.state" >"$STATE_DIR/pushed.state.tmp"
	mv "$STATE_DIR/pushed.state.tmp" "$STATE_DIR/pushed.state"
}

# `light`: the push only replaced objects (none created, deleted or refused), no reload came
# before it and every changed endpoint is read in depth. Then the reads skip the `pjsip list`
# tables: `pjsip show endpoint` shows each replaced endpoint's objects, and an object no push
# touched cannot have changed in memory but by a restart (the observer's audit finds that).
light_after_push() {
	case "$pushed" in
	*"ari: created 0 replaced "*" deleted 0 failed 0"*)
		if [ -z "$migrating" ] && [ ! -e "$ADDED" ]; then light=1; fi
		;;
	esac
}

# The dialplan read's kept lines: the headers, and the lines that end each `dialplan show`
# (its counts: asterisk_output.contexts_complete).
context_lines() {
	grep -e '^\[ ' -e '^-= ' -e '^There is no existence' || true
}

read_endpoints() {
	while read -r e; do
		section "endpoint:$e"
		asterisk -rx "pjsip show endpoint $e"
		section "auth:$e"
		asterisk -rx "pjsip show auth $e-auth" | sed -n 's/^ *password *: //p' | sha256sum
	done
}

read_contexts() {
	while read -r c; do
		asterisk -rx "dialplan show $c" | context_lines
	done
}

# The owned files' digests by path ($1: the PJSIP file went over ARI, so its record in
# PUSHED_DIR counts, and one in pjsip.d/ is listed by its full path: a redelivery moves it out).
file_digests() (
	cd "$CONFIG_DIR" || exit 0
	if [ -z "$1" ]; then
		for f in "$OWNED_PJSIP" "$OWNED_DIALPLAN"; do
			if [ -e "$f" ]; then sha256sum "$f"; fi
		done
		exit 0
	fi
	if [ -e "$OWNED_DIALPLAN" ]; then sha256sum "$OWNED_DIALPLAN"; fi
	if [ -e "$OWNED_PJSIP" ]; then echo "present  $CONFIG_DIR/$OWNED_PJSIP"; fi
	cd "$PUSHED_DIR" 2>/dev/null || exit 0
	for f in "$OWNED_PJSIP" "$OWNED_DIALPLAN"; do
		if [ -e "$f" ]; then sha256sum "$f"; fi
	done
)

# What Asterisk has loaded, in sections: each endpoint of DETAIL_LIST in depth (with its
# auth's password hash), the contexts of CONTEXT_LIST that exist, the transports, the
# listings, the delivered hash and the owned files' digests. $1: the PJSIP file went over
# ARI; $2: one whole `dialplan show` when there are many contexts to check. The reads run in
# parallel into files under observed/, printed in order once all are done.
observe() {
	out="$STATE_DIR/observed"
	rm -rf "$out" && mkdir -p "$out"
	deal "$DETAIL_LIST" "$out/detail."
	for chunk in "$out"/detail.?; do
		[ -e "$chunk" ] || continue
		read_endpoints <"$chunk" >"$chunk.out" &
	done
	if [ -n "$2" ] && [ "$(wc -l <"$CONTEXT_LIST")" -gt "$FULL_DIALPLAN_AT" ]; then
		asterisk -rx 'dialplan show' | context_lines >"$out/dialplan" &
	else
		deal "$CONTEXT_LIST" "$out/context."
		for chunk in "$out"/context.?; do
			[ -e "$chunk" ] || continue
			read_contexts <"$chunk" >"$chunk.out" &
		done
	fi
	asterisk -rx 'pjsip show transports' >"$out/transports" &
	if [ -z "$light" ]; then
		for name in $LISTS; do
			asterisk -rx "pjsip list $name" >"$out/list-$name" &
		done
		if [ -e "$ADDED" ]; then
			for name in $ADDED_LISTS; do
				asterisk -rx "pjsip list $name" >"$out/list-$name" &
			done
		fi
	fi
	wait
	cat "$out"/detail.*.out 2>/dev/null || true
	section contexts
	cat "$out"/context.*.out 2>/dev/null || true
	for name in dialplan transports $LISTS $ADDED_LISTS; do
		read_name="$name"
		case " $LISTS $ADDED_LISTS " in *" $name "*) read_name="list-$name" ;; esac
		if [ -e "$out/$read_name" ]; then
			section "$read_name"
			cat "$out/$read_name"
		fi
	done
	section hash
	cat "$STATE_DIR/hash" 2>/dev/null || true
	section files
	file_digests "$1"
}
