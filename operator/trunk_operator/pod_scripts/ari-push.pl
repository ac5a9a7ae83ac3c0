# Push a rendered PJSIP file's objects into Asterisk's sorcery `memory` wizards over ARI, as a
# diff against what this Asterisk process was last given. Run inside the Asterisk container
# by the operator's delivery script (trunk_operator/asterisk_ari.py); core Perl modules only.
#
#   perl ari-push.pl URL WANTED STATE BOOT < "username:password" line
#
# URL     ARI's base, e.g. http://127.0.0.1:8088/ari
# WANTED  the rendered PJSIP file ([id] sections of `key = value` lines; absent: nothing)
# STATE   what was pushed: "boot EPOCH", then "kind<TAB>id<TAB>digest" per object ("-": the
#         object may exist in any version, e.g. a request that did not complete)
# BOOT    when this Asterisk started (epoch seconds): a state of another start is void, as
#         memory objects do not outlive the process
#
# A changed object is replaced (DELETE, then PUT), never updated: a PUT on an existing object
# merges into it (contacts and ACL entries accumulate, callerid turns "unknown"). Deletions go
# first (identify, endpoint, aor, auth), then creations (auth, aor, endpoint, identify), so
# references resolve. Prints "ari: created N replaced N deleted N failed N", and one
# "ari-failed: ..." line for each of the first failures ("ari-unavailable: ..." when ARI
# cannot be reached or refuses the credentials: it stops there); exits 0 unless it cannot start, so
# the delivery reads back what Asterisk has either way and verification decides.

use strict;
use warnings;
use Digest::MD5 qw(md5_hex);
use HTTP::Tiny;
use MIME::Base64 qw(encode_base64);

my @KINDS = qw(auth aor endpoint identify);
my %RANK = map { $KINDS[$_] => $_ } 0 .. $#KINDS;
my $SHOWN_FAILURES = 5;

my ($url, $wanted_path, $state_path, $boot) = @ARGV;
die "usage: ari-push.pl URL WANTED STATE BOOT\n" unless defined $boot && $boot =~ /^\d+$/;
my $credentials = <STDIN>;
die "ari-push.pl: no credentials on stdin\n" unless defined $credentials;
chomp $credentials;

# ---- what is wanted: the file's sections, each as a JSON body and its digest ---------------

sub json_string {
    my ($text) = @_;
    $text =~ s/(["\\])/\\$1/g;  # the renderer refuses control characters
    return "\"$text\"";
}

my (%body, %digest, @order);
if (open my $in, '<', $wanted_path) {
    my ($id, $kind, @fields);
    my $flush = sub {
        return unless defined $id;
        die "ari-push.pl: section [$id] has no type\n" unless defined $kind;
        die "ari-push.pl: [$id] is a $kind, not a trunk object\n" unless exists $RANK{$kind};
        my $json = '{"fields":['
          . join(',', map { '{"attribute":' . json_string($_->[0]) . ',"value":' . json_string($_->[1]) . '}' } @fields)
          . ']}';
        my $key = "$kind\t$id";
        push @order, $key unless exists $body{$key};
        $body{$key} = $json;
        $digest{$key} = md5_hex($json);
    };
    while (my $line = <$in>) {
        chomp $line;
        next if $line =~ /^\s*(;|$)/;
        if ($line =~ /^\[([^\]]+)\]\s*$/) {
            $flush->();
            ($id, $kind, @fields) = ($1);
            next;
        }
        my ($name, $value) = $line =~ /^\s*([^=\s]+)\s*=\s*(.*?)\s*$/
          or die "ari-push.pl: cannot read line: $line\n";
        $value =~ s/\\;/;/g;  # escaped in files (`;` starts a comment there), not in ARI
        if ($name eq 'type') { $kind = $value } else { push @fields, [$name, $value] }
    }
    $flush->();
    close $in;
}

# ---- what this Asterisk has: the state of its own start, or nothing -------------------------

my %had;
if (open my $in, '<', $state_path) {
    my $first = <$in> // '';
    if ($first =~ /^boot (\d+)$/ && abs($1 - $boot) <= 2) {  # the same start, read twice
        while (my $line = <$in>) {
            chomp $line;
            my ($kind, $id, $sum) = split /\t/, $line;
            $had{"$kind\t$id"} = $sum if defined $sum;
        }
    }
    close $in;
}

sub rank_of { return $RANK{(split /\t/, $_[0])[0]} // 0 }
my @deletes = sort { rank_of($b) <=> rank_of($a) || $a cmp $b } grep { !exists $body{$_} } keys %had;
my @puts = sort { rank_of($a) <=> rank_of($b) || $a cmp $b }
  grep { !exists $had{$_} || $had{$_} ne $digest{$_} } @order;

my %state = %had;
sub write_state {
    open my $out, '>', "$state_path.tmp" or die "ari-push.pl: $state_path.tmp: $!\n";
    print $out "boot $boot\n";
    print $out "$_\t$state{$_}\n" for sort keys %state;
    close $out or die "ari-push.pl: $state_path.tmp: $!\n";
    rename "$state_path.tmp", $state_path or die "ari-push.pl: $state_path: $!\n";
}
# Before any request: what is touched becomes unknown, so an interrupted run is repaired by
# the next one (a DELETE first, whatever Asterisk has).
$state{$_} = '-' for @deletes, @puts;
write_state();

# ---- the requests ---------------------------------------------------------------------------

my $http = HTTP::Tiny->new(
    keep_alive => 1,
    timeout => 30,
    default_headers => {
        'Authorization' => 'Basic ' . encode_base64($credentials, ''),
        'Content-Type' => 'application/json',
    },
);
my %done = (created => 0, replaced => 0, deleted => 0, failed => 0);
my $unreachable;

sub failed {
    my ($what, $response) = @_;
    $done{failed}++;
    my $reason = $response->{status} == 599 ? $response->{content} : "$response->{status} $response->{reason}";
    $reason .= " $response->{content}" if $response->{status} != 599 && ($response->{content} // '') =~ /\S/;
    $reason =~ s/\s+/ /g;
    # Unreachable or refused as a whole: the other requests would fail the same way, and the
    # operator retries the delivery ("ari-unavailable") rather than blame the trunks.
    $unreachable = 1 if $response->{status} == 599 || $response->{status} == 401;
    my $kind = $unreachable ? 'ari-unavailable' : 'ari-failed';
    print "$kind: $what: " . substr($reason, 0, 200) . "\n" if $done{failed} <= $SHOWN_FAILURES;
    return 0;
}

sub object_url {
    my ($key) = @_;
    my ($kind, $id) = split /\t/, $key;
    $id =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ge;
    return "$url/asterisk/config/dynamic/res_pjsip/$kind/$id";
}

sub remove {  # true when the object is gone (404: it was not there)
    my ($key) = @_;
    my $response = $http->request('DELETE', object_url($key));
    return 1 if $response->{status} == 204 || $response->{status} == 404;
    return failed("DELETE " . join('/', split /\t/, $key), $response);
}

sub create {
    my ($key) = @_;
    my $response = $http->request('PUT', object_url($key), { content => $body{$key} });
    return 1 if $response->{success};
    return failed("PUT " . join('/', split /\t/, $key), $response);
}

for my $key (@deletes) {
    last if $unreachable;
    if (remove($key)) { delete $state{$key}; $done{deleted}++ }
}
for my $key (@puts) {
    last if $unreachable;
    my $existed = exists $had{$key};
    next if $existed && !remove($key);
    if (create($key)) { $state{$key} = $digest{$key}; $done{$existed ? 'replaced' : 'created'}++ }
    else { $state{$key} = '-' }
}
write_state();
print "ari: created $done{created} replaced $done{replaced} deleted $done{deleted} failed $done{failed}\n";
