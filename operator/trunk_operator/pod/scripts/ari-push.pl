# Push a rendered PJSIP file's objects into Asterisk's sorcery `memory` wizards over ARI, as a
# diff against what this Asterisk process was last given. Run inside the Asterisk container
# by the operator's delivery script (trunk_operator/pod/ari.py); core Perl modules only.
#
#   perl ari-push.pl URL WANTED STATE BOOT < "username:password" line
#
# URL     ARI's base, e.g. http://127.0.0.1:8088/ari
# WANTED  the rendered PJSIP file ([id] sections of `key = value` lines; absent: nothing)
# STATE   what was pushed: "boot EPOCH", then "kind<TAB>id<TAB>digest" per object ("-": the
#         object may exist in any version, e.g. a request that did not complete; "gone": it
#         was deleted). Appended to (a later line for an object wins), and written whole
#         again once a quarter of it is such lines: with 10,000 trunks a whole write costs
#         ~70 ms, and a run that replaces one object wrote it twice.
# BOOT    when this Asterisk started (epoch seconds): a state of another start is void, as
#         memory objects do not outlive the process
#
# A changed object is replaced (DELETE, then PUT), never updated: a PUT on an existing object
# merges into it (contacts and ACL entries accumulate, callerid turns "unknown"). Deletions go
# first (identify, endpoint, aor, auth), then creations (auth, aor, endpoint, identify), so
# references resolve; the endpoints wait for Asterisk's tasks of new AORs (settle_aors), and
# a replaced endpoint for the tasks of its DELETE (await_endpoint_tasks).
# Prints "ari: created N replaced N deleted N failed N" ("ari: waited S s for ..." after it
# when it waited for those tasks), and one "ari-failed: ..." line for each of the first
# failures ("ari-unavailable: ..." when ARI cannot be reached or refuses the credentials: it
# stops there); exits 0 unless it cannot start, so the delivery reads back what Asterisk has
# either way and verification decides.

use strict;
use warnings;
use Digest::MD5 qw(md5_hex);
use HTTP::Tiny;
use MIME::Base64 qw(encode_base64);
use Time::HiRes qw(time sleep);

my @KINDS = qw(auth aor endpoint identify);
my %RANK = map { $KINDS[$_] => $_ } 0 .. $#KINDS;
my $SHOWN_FAILURES = 5;

my ($url, $wanted_path, $state_path, $boot) = @ARGV;
die "usage: ari-push.pl URL WANTED STATE BOOT\n" unless defined $boot && $boot =~ /^\d+$/;
my $credentials = <STDIN>;
die "ari-push.pl: no credentials on stdin\n" unless defined $credentials;
chomp $credentials;

# ---- what is wanted: the file's sections, each with the digest of its settings ------------

sub json_string {
    my ($text) = @_;
    $text =~ s/(["\\])/\\$1/g;  # the renderer refuses control characters
    return "\"$text\"";
}

# A section's settings: its lines without comments and blank lines (the comment that heads the
# next trunk is not part of this one).
my (%settings, %digest, @order);
if (open my $in, '<', $wanted_path) {
    my $text = do { local $/; <$in> } // '';
    close $in;
    $text =~ s/^[ \t]*(?:;[^\n]*)?\n//mg;
    for my $section (split /^(?=\[)/m, $text) {
        next unless $section =~ /^\[([^\]]+)\]/;
        my $id = $1;
        my ($kind) = $section =~ /^type\s*=\s*(\S+)\s*$/m
          or die "ari-push.pl: section [$id] has no type\n";
        die "ari-push.pl: [$id] is a $kind, not a trunk object\n" unless exists $RANK{$kind};
        my $key = "$kind\t$id";
        push @order, $key unless exists $settings{$key};
        $settings{$key} = $section;
        $digest{$key} = md5_hex($section);
    }
}

sub body {  # ARI's JSON for an object's settings (all but `type`), in the file's order
    my ($key) = @_;
    my @fields;
    for my $line (split /\n/, $settings{$key}) {
        next if $line =~ /^\[/;
        my ($name, $value) = $line =~ /^\s*([^=\s]+)\s*=\s*(.*?)\s*$/
          or die "ari-push.pl: cannot read line: $line\n";
        next if $name eq 'type';
        $value =~ s/\\;/;/g;  # escaped in files (`;` starts a comment there), not in ARI
        push @fields, '{"attribute":' . json_string($name) . ',"value":' . json_string($value) . '}';
    }
    return '{"fields":[' . join(',', @fields) . ']}';
}

# ---- what this Asterisk has: the state of its own start, or nothing -------------------------

my %had;
my $lines = 0;  # of the state as read: what appending has made of it
if (open my $in, '<', $state_path) {
    my $first = <$in> // '';
    if ($first =~ /^boot (\d+)$/ && abs($1 - $boot) <= 2) {  # the same start, read twice
        while (my $line = <$in>) {
            chomp $line;
            my ($kind, $id, $sum) = split /\t/, $line;
            next unless defined $sum;
            $lines++;
            if ($sum eq 'gone') { delete $had{"$kind\t$id"} } else { $had{"$kind\t$id"} = $sum }
        }
    }
    close $in;
}

my @deletes = grep { !exists $settings{$_} } keys %had;
my @puts = grep { !exists $had{$_} || $had{$_} ne $digest{$_} } @order;
# Endpoints to replace: DELETEd with the deletions, PUT once Asterisk ran those DELETEs'
# tasks (await_endpoint_tasks, below).
my %cleared = map { $_ => 1 } grep { (split /\t/)[0] eq 'endpoint' && exists $had{$_} } @puts;
my %rank_of = map { $_ => $RANK{(split /\t/)[0]} // 0 } @deletes, @puts;
@deletes = sort { $rank_of{$b} <=> $rank_of{$a} || $a cmp $b } @deletes;
@puts = sort { $rank_of{$a} <=> $rank_of{$b} || $a cmp $b } @puts;

my %state = %had;
sub write_state {  # whole: to a new file, renamed over the old one
    open my $out, '>', "$state_path.tmp" or die "ari-push.pl: $state_path.tmp: $!\n";
    print $out "boot $boot\n";
    print $out "$_\t$state{$_}\n" for sort keys %state;
    close $out or die "ari-push.pl: $state_path.tmp: $!\n";
    rename "$state_path.tmp", $state_path or die "ari-push.pl: $state_path: $!\n";
    $lines = keys %state;
}
sub record {  # these objects' state, appended (whole when the record of this start is new)
    my @keys = @_;
    return write_state() if !%had && !$lines || $lines + @keys > 1.25 * (keys %state) + 64;
    open my $out, '>>', $state_path or die "ari-push.pl: $state_path: $!\n";
    print $out "$_\t" . ($state{$_} // 'gone') . "\n" for @keys;
    close $out or die "ari-push.pl: $state_path: $!\n";
    $lines += @keys;
}
# Before any request: what is touched becomes unknown, so an interrupted run is repaired by
# the next one (a DELETE first, whatever Asterisk has). Nothing to do: nothing to write.
$state{$_} = '-' for @deletes, @puts;
record(@deletes, @puts) if @deletes || @puts || !%had;

# ---- the requests ---------------------------------------------------------------------------
# Each object's request(s) give one outcome line: "<done> <kind> <id> <state>[ <message>]",
# <done> one of created replaced deleted failed unavailable, <state> its digest, "-" (unknown)
# or "gone". A large phase (a restarted Asterisk's full set) is shared by WORKERS processes,
# each with its own keep-alive connection: Asterisk serves them in parallel.

my $WORKERS = 4;
my $PARALLEL_FROM = 64;  # objects of a phase (a type); fewer go over one connection
my $http;

sub client {
    return HTTP::Tiny->new(
        keep_alive => 1,
        timeout => 30,
        default_headers => {
            'Authorization' => 'Basic ' . encode_base64($credentials, ''),
            'Content-Type' => 'application/json',
        },
    );
}

sub object_url {
    my ($key) = @_;
    my ($kind, $id) = split /\t/, $key;
    $id =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ge;
    return "$url/asterisk/config/dynamic/res_pjsip/$kind/$id";
}

sub failure {  # the outcome of a refused request
    my ($method, $key, $state, $response) = @_;
    my $status = $response->{status};
    my $reason = $status == 599 ? $response->{content} : "$status $response->{reason}";
    $reason .= " $response->{content}" if $status != 599 && ($response->{content} // '') =~ /\S/;
    $reason =~ s/\s+/ /g;
    # Unreachable or refused as a whole: the other requests would fail the same way, and the
    # operator retries the delivery ("ari-unavailable") rather than blame the trunks.
    my $done = ($status == 599 || $status == 401) ? 'unavailable' : 'failed';
    my ($kind, $id) = split /\t/, $key;
    return "$done $kind $id $state $method $kind/$id: " . substr($reason, 0, 200);
}

sub outcome {  # one object: deleted, or replaced (DELETE, then PUT), or created
    my ($op, $key) = @_;  # $op: delete, put, or clear (the DELETE of an endpoint's replacement)
    my ($kind, $id) = split /\t/, $key;
    my $existed = exists $had{$key};
    if ($op ne 'put' || ($existed && !$cleared{$key})) {
        my $response = $http->request('DELETE', object_url($key));
        return failure('DELETE', $key, '-', $response)
          unless $response->{status} == 204 || $response->{status} == 404;
        my $absent = $response->{status} == 404 ? ' absent' : '';
        return "deleted $kind $id gone$absent" if $op eq 'delete';
        return "cleared $kind $id -$absent" if $op eq 'clear';
    }
    my $response = $http->request('PUT', object_url($key), { content => body($key) });
    return failure('PUT', $key, '-', $response) unless $response->{success};
    return ($existed ? 'replaced' : 'created') . " $kind $id $digest{$key}";
}

sub run_phase {  # the outcome lines of one phase's objects, stopping at an unavailable ARI
    my ($op, @keys) = @_;
    my @outcomes;
    if (@keys < $PARALLEL_FROM) {
        $http //= client();
        for my $key (@keys) {
            push @outcomes, outcome($op, $key);
            last if $outcomes[-1] =~ /^unavailable /;
        }
        return @outcomes;
    }
    my @readers;
    for my $worker (0 .. $WORKERS - 1) {
        my @slice = @keys[grep { $_ % $WORKERS == $worker } 0 .. $#keys];
        pipe(my $reader, my $writer) or die "ari-push.pl: pipe: $!\n";
        my $pid = fork() // die "ari-push.pl: fork: $!\n";
        if ($pid == 0) {
            close $reader;
            $http = client();
            for my $key (@slice) {
                my $line = outcome($op, $key);
                print {$writer} "$line\n";
                last if $line =~ /^unavailable /;
            }
            close $writer;
            exit 0;
        }
        close $writer;
        push @readers, [$pid, $reader];
    }
    for my $child (@readers) {
        my ($pid, $reader) = @$child;
        while (my $line = <$reader>) { chomp $line; push @outcomes, $line }
        waitpid $pid, 0;
    }
    return @outcomes;
}

# Sorcery tells res_pjsip of a new AOR asynchronously, and res_pjsip then retrieves every
# endpoint into a sorted list (sip_options_aor_observer_modified_task in
# res_pjsip/pjsip_options.c; the list in main/sorcery.c): each new AOR costs m^2 for the m
# endpoints there when its task runs. So the endpoints go in once those tasks are done: 7,000
# trunks added to a pod of 3,000 then cost 7,000 x 3,000^2, not up to 7,000 x 10,000^2.
my $SETTLE_AT_MOST = 120;  # seconds; then the endpoints go in anyway

sub sorcery_tasks {  # (processed, queued) of sorcery's serializer of a type; () if not listed
    my ($type) = @_;
    my ($processed, $queued, $listed) = (0, 0, 0);
    for my $line (`asterisk -rx 'core show taskprocessors like sorcery/$type' 2>/dev/null`) {
        my @fields = split ' ', $line;
        next unless @fields > 2 && $fields[0] =~ m{^sorcery/\Q$type\E-}
          && $fields[1] =~ /^\d+$/ && $fields[2] =~ /^\d+$/;
        ($processed, $queued, $listed) = ($processed + $fields[1], $queued + $fields[2], 1);
    }
    return $listed ? ($processed, $queued) : ();
}

sub settle_aors {  # seconds waited for the AOR tasks of this push; undef: none were queued
    my $started = time;
    my (undef, $queued) = sorcery_tasks('aor');
    return undef unless $queued;
    while ($queued && time - $started < $SETTLE_AT_MOST) {
        sleep 0.05;
        (undef, $queued) = sorcery_tasks('aor');
    }
    return time - $started;
}

# res_pjsip gives each endpoint an Asterisk endpoint, whose state (a Stasis snapshot) `pjsip
# show endpoint(s)` and `pjsip list endpoints` print without checking that it exists. A DELETEd
# endpoint's is shut down by a sorcery observer, in a task queued on sorcery's endpoint
# serializer when the DELETE returned; a PUT of the same id before that task ran takes the old
# one over, and the task then shuts it down: the new endpoint is left without its state for
# good, and the next CLI read of it crashes Asterisk 22 (asterisk/asterisk#2172;
# pjsip_configuration.c). So a replaced endpoint is DELETEd with the deletions, and PUT once
# the tasks of those DELETEs have run (a created endpoint's state is in Asterisk's cache when
# its PUT returns: the cache is updated in the publishing thread).
sub await_endpoint_tasks {  # seconds waited until `$count` tasks more than `$from` have run
    my ($from, $count) = @_;
    my ($started, $pause) = (time, 0.005);
    while (time - $started < $SETTLE_AT_MOST) {
        my ($processed) = sorcery_tasks('endpoint');
        last if !defined $processed || $processed >= $from + $count;
        sleep $pause;
        $pause = $pause * 2 > 0.2 ? 0.2 : $pause * 2;
    }
    return time - $started;
}

my %done = (created => 0, replaced => 0, deleted => 0, failed => 0);
my $settled;
my $unavailable;
my %uncleared;  # replaced endpoints whose DELETE failed: not PUT (it would merge into them)
sub tally {  # one outcome line
    my ($line) = @_;
    my ($what, $kind, $id, $result, $message) = split / /, $line, 5;
    my $key = "$kind\t$id";
    if ($result eq 'gone') { delete $state{$key} } else { $state{$key} = $result }
    if ($what eq 'failed' || $what eq 'unavailable') {
        $done{failed}++;
        $uncleared{$key} = 1;
        $unavailable = 1 if $what eq 'unavailable';
        print "ari-$what: $message\n" if $done{failed} <= $SHOWN_FAILURES;
    } elsif ($what ne 'cleared') {
        $done{$what}++;
    }
}
sub of_kind { my $kind = shift; grep { (split /\t/)[0] eq $kind } @_ }

my $endpoints_waited;
for my $kind (reverse @KINDS) {
    last if $unavailable;
    my @deleted = of_kind($kind, @deletes);
    my @clears = $kind eq 'endpoint' ? grep { $cleared{$_} } @puts : ();
    my @before = $kind eq 'endpoint' && (@deleted || @clears) ? sorcery_tasks('endpoint') : ();
    my @lines = (run_phase('delete', @deleted), run_phase('clear', @clears));
    tally($_) for @lines;
    # One observer task per endpoint a DELETE took out (204; not 404: there was none).
    my $tasks = grep { /^(?:deleted|cleared) / && !/ absent$/ } @lines;
    # Also when none is replaced here: the next push may bring one back.
    $endpoints_waited = await_endpoint_tasks($before[0] + $before[1], $tasks)
      if @before && $tasks && !$unavailable;
}
for my $kind (@KINDS) {
    last if $unavailable;
    my @keys = grep { !$uncleared{$_} } of_kind($kind, @puts);
    tally($_) for run_phase('put', @keys);
    $settled = settle_aors() if $kind eq 'aor' && @keys;
}
record(@deletes, @puts) if @deletes || @puts;
print "ari: created $done{created} replaced $done{replaced} deleted $done{deleted} failed $done{failed}\n";
printf "ari: waited %.2f s for Asterisk's AOR observers\n", $settled if defined $settled;
printf "ari: waited %.2f s for Asterisk's endpoint observers\n", $endpoints_waited
  if ($endpoints_waited // 0) >= 0.01;
