# Run the operator's ARI operations against Asterisk's sorcery `memory` wizards: an ordered
# list computed by the operator (trunk_operator/pod/ari_plan.py), which this program executes
# and parses nothing of. Run inside the Asterisk container by the delivery script; core Perl
# modules only.
#
#   perl ari-push.pl URL RECORD BOOT FRESH OPS_SIZE LEFT < credentials line, then the steps
#
# URL      ARI's base, e.g. http://127.0.0.1:8088/ari
# RECORD   the record of what this Asterisk process was given: "boot EPOCH", then
#          "kind<TAB>id<TAB>state" lines, appended to (a later line for an object wins); state
#          is a digest, "-" (it may exist in any version: a request that did not complete) or
#          "gone". Before any request every object touched is marked "-", so an interrupted
#          run is repaired by the next one (a DELETE first, whatever Asterisk has).
# BOOT     when this Asterisk started (epoch seconds): the header of a new record
# FRESH    non-empty: the record is of another start (or none) and is written anew
# OPS_SIZE the length of the steps on stdin: "verb<TAB>kind<TAB>id<TAB>digest<TAB>body" lines
# LEFT     where to list the objects left "-" (failed, or not run), one "kind<TAB>id" a line
#
# Prints "ari: created N replaced N deleted N failed N" ("ari: waited S s for ..." after it
# when it waited for Asterisk's tasks), and one "ari-failed: ..." line for each of the first
# failures ("ari-unavailable: ..." when ARI cannot be reached or refuses the credentials: it
# stops there); exits 0 unless it cannot start, so the delivery reads back what Asterisk has
# either way and verification decides.

use strict;
use warnings;
use HTTP::Tiny;
use MIME::Base64 qw(encode_base64);
use Time::HiRes qw(time sleep);

my $SHOWN_FAILURES = 5;

my ($url, $record_path, $boot, $fresh, $ops_size, $left_path) = @ARGV;
die "usage: ari-push.pl URL RECORD BOOT FRESH OPS_SIZE LEFT\n"
  unless defined $left_path && $boot =~ /^\d+$/ && $ops_size =~ /^\d+$/;
my $credentials = <STDIN>;
die "ari-push.pl: no credentials on stdin\n" unless defined $credentials;
chomp $credentials;
my $steps = '';
while (length $steps < $ops_size) {
    read(STDIN, $steps, $ops_size - length $steps, length $steps)
      or die "ari-push.pl: the steps end early\n";
}
# Each step: [verb, kind, id, digest, body]; await and settle name no object.
my @steps = map { [split /\t/, $_, 5] } split /\n/, $steps;
my @touched = grep { $_->[0] ne 'await' && $_->[0] ne 'settle' } @steps;
my %step_of = map { ("$_->[1]\t$_->[2]" => $_) } @touched;  # an object's last step

# ---- the record -----------------------------------------------------------------------------

sub append_record {  # lines "kind<TAB>id<TAB>state"; a fresh record starts with its header
    my @lines = @_;
    my $mode = $fresh ? '>' : '>>';
    open my $out, $mode, $record_path or die "ari-push.pl: $record_path: $!\n";
    print $out "boot $boot\n" if $fresh;
    print $out @lines;
    close $out or die "ari-push.pl: $record_path: $!\n";
    $fresh = '';
}
append_record(map { "$_->[1]\t$_->[2]\t-\n" } @touched) if @touched || $fresh;

# ---- the requests ---------------------------------------------------------------------------
# Each step's request(s) give one outcome line: "<done> <kind> <id> <state>[ <message>]",
# <done> one of created replaced deleted failed unavailable, <state> its digest, "-" (unknown)
# or "gone". A large phase (a restarted Asterisk's full set) is shared by WORKERS processes,
# each with its own keep-alive connection: Asterisk serves them in parallel.

my $WORKERS = 4;
my $PARALLEL_FROM = 64;  # steps of a phase (one verb, one type); fewer go over one connection
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

sub outcome {  # one step's outcome line
    my ($step) = @_;
    my ($verb, $kind, $id, $digest, $body) = @$step;
    my $key = "$kind\t$id";
    if ($verb ne 'create' && $verb ne 'refill') {
        my $response = $http->request('DELETE', object_url($key));
        return failure('DELETE', $key, '-', $response)
          unless $response->{status} == 204 || $response->{status} == 404;
        my $absent = $response->{status} == 404 ? ' absent' : '';
        return "deleted $kind $id gone$absent" if $verb eq 'delete';
        return "cleared $kind $id -$absent" if $verb eq 'clear';
    }
    my $response = $http->request('PUT', object_url($key), { content => $body });
    return failure('PUT', $key, '-', $response) unless $response->{success};
    return ($verb eq 'create' ? 'created' : 'replaced') . " $kind $id $digest";
}

sub run_phase {  # the outcome lines of one phase's steps, stopping at an unavailable ARI
    my (@phase) = @_;
    my @outcomes;
    if (@phase < $PARALLEL_FROM) {
        $http //= client();
        for my $step (@phase) {
            push @outcomes, outcome($step);
            last if $outcomes[-1] =~ /^unavailable /;
        }
        return @outcomes;
    }
    my @readers;
    for my $worker (0 .. $WORKERS - 1) {
        my @slice = @phase[grep { $_ % $WORKERS == $worker } 0 .. $#phase];
        pipe(my $reader, my $writer) or die "ari-push.pl: pipe: $!\n";
        my $pid = fork() // die "ari-push.pl: fork: $!\n";
        if ($pid == 0) {
            close $reader;
            $http = client();
            for my $step (@slice) {
                my $line = outcome($step);
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
my %state;  # the objects' states after their steps ran
my ($unavailable, $settled, $endpoints_waited, $endpoint_tasks_before);
my $endpoint_tasks = 0;  # the endpoint DELETEs that took one out (each queues a task)
my %uncleared;  # endpoints whose clear failed: not refilled (a PUT would merge into them)
sub tally {  # one outcome line
    my ($line) = @_;
    my ($what, $kind, $id, $result, $message) = split / /, $line, 5;
    $state{"$kind\t$id"} = $result;
    $endpoint_tasks++ if $kind eq 'endpoint' && $what =~ /^(?:deleted|cleared)$/
      && ($message // '') ne 'absent';
    if ($what eq 'failed' || $what eq 'unavailable') {
        $done{failed}++;
        $uncleared{"$kind\t$id"} = 1;
        $unavailable = 1 if $what eq 'unavailable';
        print "ari-$what: $message\n" if $done{failed} <= $SHOWN_FAILURES;
    } elsif ($what ne 'cleared') {
        $done{$what}++;
    }
}

# Consecutive steps of one verb and type form a phase.
my $at = 0;
while ($at < @steps && !$unavailable) {
    my ($verb, $kind) = @{$steps[$at]};
    my $end = $at;
    $end++ while $end + 1 < @steps && $steps[$end + 1][0] eq $verb && $steps[$end + 1][1] eq $kind;
    my @phase = @steps[$at .. $end];
    $at = $end + 1;
    if ($verb eq 'await') {
        $endpoints_waited = await_endpoint_tasks($endpoint_tasks_before, $endpoint_tasks)
          if defined $endpoint_tasks_before && $endpoint_tasks;
    } elsif ($verb eq 'settle') {
        $settled = settle_aors();
    } else {
        if ($kind eq 'endpoint' && ($verb eq 'delete' || $verb eq 'clear')
            && !defined $endpoint_tasks_before) {
            my ($processed, $queued) = sorcery_tasks('endpoint');
            $endpoint_tasks_before = $processed + $queued if defined $processed;
        }
        @phase = grep { !$uncleared{"$_->[1]\t$_->[2]"} } @phase if $verb eq 'refill';
        tally($_) for run_phase(@phase);
    }
}

# What reached the state its step meant is recorded; the rest stays "-" (marked above).
my (@reached, @left);
for my $key (sort keys %step_of) {
    my $step = $step_of{$key};
    my $meant = $step->[0] eq 'delete' ? 'gone' : $step->[0] eq 'clear' ? '-' : $step->[3];
    if (($state{$key} // '') eq $meant) {
        push @reached, "$key\t$meant\n" if $meant ne '-';
    } else {
        push @left, "$key\n";
    }
}
append_record(@reached) if @reached;
open my $left_out, '>', $left_path or die "ari-push.pl: $left_path: $!\n";
print $left_out @left;
close $left_out or die "ari-push.pl: $left_path: $!\n";

print "ari: created $done{created} replaced $done{replaced} deleted $done{deleted} failed $done{failed}\n";
printf "ari: waited %.2f s for Asterisk's AOR observers\n", $settled if defined $settled;
printf "ari: waited %.2f s for Asterisk's endpoint observers\n", $endpoints_waited
  if ($endpoints_waited // 0) >= 0.01;
