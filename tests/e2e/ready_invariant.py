"""The Ready invariant, as a scenario the e2e tier (small) and the benchmark (large) both run.

Many trunks share one Asterisk pod; a seeded random sequence of spec and Secret changes hits a
few "hot" trunks, some waiting for Ready like a user with `kubectl wait`, some landing while
the previous delivery is still running. A watch follows every status the operator writes:

- each time a trunk says Ready=True for generation G and Secret resourceVersion V, a checker
  asks Asterisk (`pjsip show endpoint`, `pjsip show auth`) at once: the pod must serve the
  codecs of generation G or a later one and the password of version V or a later one;
- at the end, the Events of every trunk must match its condition transitions as the watch
  saw them (at most one Event per transition), untouched trunks must have exactly the two of
  their creation (Ready, ContextMissing), and no trunk may ever have been NoAsteriskPods.

The scenario only needs the API clients, a namespace, and the pod's Asterisk container.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes import client, watch

from trunk_operator.core.asterisk_output import parse_endpoint_detail
from trunk_operator.core.models import GROUP, VERSION

PLURAL = "twiliotrunks"
SECRET = "shared-sip"
CODEC_CHOICES = (("ulaw",), ("alaw",), ("ulaw", "alaw"), ("alaw", "ulaw"))


class Asterisk(Protocol):
    def rx(self, cmd: str, timeout: float = 60, check: bool = True) -> str: ...


def endpoint_name(name: str) -> str:
    return name.upper()


def trunk_spec(index: int, name: str, secret: str, codecs: tuple[str, ...]) -> dict[str, Any]:
    return {
        "terminationHost": "bench.pstn.twilio.com",
        "credentials": {"secretName": secret},
        "qualifyFrequencySeconds": 0,
        "codecs": list(codecs),
        "inbound": {"accountSid": f"AC{index:032x}"},  # the default context does not exist
        "outbound": {"context": f"to-{name}"},
    }


@dataclass
class Served:
    """What the test applied to one hot trunk, by generation and Secret version."""

    codecs: dict[int, tuple[str, ...]] = field(default_factory=dict)
    passwords: list[tuple[int, str]] = field(default_factory=list)  # (resourceVersion, pw)


@dataclass
class Report:
    checks: int = 0
    violations: list[str] = field(default_factory=list)
    event_problems: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    transitions: dict[str, int] = field(default_factory=dict)
    events: dict[str, Counter[str]] = field(default_factory=dict)
    seconds: float = 0.0


def _conditions(obj: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        c["type"]: (c["status"], c["reason"])
        for c in (obj.get("status") or {}).get("conditions", [])
    }


class ReadyInvariant:
    def __init__(
        self,
        core: client.CoreV1Api,
        custom: client.CustomObjectsApi,
        namespace: str,
        pbx: Asterisk,
        *,
        seed: int,
        trunks: int,
        hot: int,
        actions: int,
        log: Any = print,
    ) -> None:
        self.core, self.custom, self.namespace, self.pbx = core, custom, namespace, pbx
        self.random = random.Random(seed)
        self.names = [f"m{i}" for i in range(trunks)]
        self.hot = self.names[:hot]
        self.actions = actions
        self.log = log
        self.lock = threading.Lock()
        self.served: dict[str, Served] = {name: Served() for name in self.hot}
        self.history: dict[str, list[dict[str, tuple[str, str]]]] = defaultdict(list)
        self.latest: dict[str, dict[str, Any]] = {}
        self.checks: queue.Queue[tuple[str, int, int] | None] = queue.Queue()
        self.report = Report()
        self.stop = threading.Event()

    # ---- the API --------------------------------------------------------------------

    def _secret(self, name: str, password: str, create: bool) -> int:
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            string_data={"username": f"{name}-user", "password": password},
        )
        if create:
            made = self.core.create_namespaced_secret(self.namespace, body)
        else:
            made = self.core.replace_namespaced_secret(name, self.namespace, body)
        return int(made.metadata.resource_version)

    def _create_trunk(self, index: int, name: str) -> None:
        secret = f"{name}-sip" if name in self.hot else SECRET
        codecs = CODEC_CHOICES[0]
        obj = self.custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "TwilioTrunk",
                "metadata": {"name": name},
                "spec": trunk_spec(index, name, secret, codecs),
            },
        )
        if name in self.hot:
            with self.lock:
                self.served[name].codecs[int(obj["metadata"]["generation"])] = codecs

    def _patch_codecs(self, name: str) -> int:
        with self.lock:
            current = self.served[name].codecs[max(self.served[name].codecs)]
        codecs = self.random.choice([c for c in CODEC_CHOICES if c != current])
        with self.lock:  # held across the patch: the checker must know G once Ready(G) shows
            obj = self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, {"spec": {"codecs": list(codecs)}}
            )
            generation = int(obj["metadata"]["generation"])
            self.served[name].codecs[generation] = codecs
        self.report.actions.append(f"{name} codecs {','.join(codecs)} (generation {generation})")
        return generation

    def _rotate(self, name: str) -> int:
        password = f"pw;{self.random.getrandbits(40):010x}"
        with self.lock:
            version = self._secret(f"{name}-sip", password, create=False)
            self.served[name].passwords.append((version, password))
        self.report.actions.append(f"{name} password rotated (Secret version {version})")
        return version

    # ---- watching and checking ----------------------------------------------------------

    def _watch(self) -> None:
        w = watch.Watch()
        version = ""
        while not self.stop.is_set():
            try:
                for event in w.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    resource_version=version,
                    timeout_seconds=5,
                ):
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    self._seen(obj)
                    if self.stop.is_set():
                        break
            except Exception as error:  # a watch that expired: start over from a list
                self.log(f"watch restarted: {error}")
                version = ""

    def _seen(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        conditions = _conditions(obj)
        history = self.history[name]
        if conditions and (not history or history[-1] != conditions):
            history.append(conditions)
        self.latest[name] = obj
        if name in self.served and conditions.get("Ready", ("", ""))[0] == "True":
            srv = int(status.get("secretResourceVersion") or 0)
            self.checks.put((name, int(status.get("observedGeneration") or 0), srv))

    def _check_loop(self) -> None:
        done: set[tuple[str, int, int]] = set()
        while (item := self.checks.get()) is not None:
            if item in done:
                continue
            done.add(item)
            self._check(*item)

    def _check(self, name: str, generation: int, secret_version: int) -> None:
        endpoint = endpoint_name(name)
        detail = parse_endpoint_detail(self.pbx.rx(f"pjsip show endpoint {endpoint}"))
        codecs = tuple(c for c in detail.get("allow", "").strip("()").split("|") if c)
        auth = parse_endpoint_detail(self.pbx.rx(f"pjsip show auth {endpoint}-auth"))
        with self.lock:
            served = self.served[name]
            allowed_codecs = {c for g, c in served.codecs.items() if g >= generation}
            allowed_passwords = {p for v, p in served.passwords if v >= secret_version}
            known = generation in served.codecs and (
                not served.passwords or any(v == secret_version for v, _ in served.passwords)
            )
        self.report.checks += 1
        if not known:
            self.report.violations.append(
                f"{name}: Ready for generation {generation} / Secret {secret_version},"
                " which the test never applied"
            )
        if codecs not in allowed_codecs:
            self.report.violations.append(
                f"{name}: Ready for generation {generation} but Asterisk serves codecs {codecs};"
                f" generation {generation} or later has {sorted(allowed_codecs)}"
            )
        if allowed_passwords and auth.get("password") not in allowed_passwords:
            self.report.violations.append(
                f"{name}: Ready for Secret version {secret_version} but Asterisk serves an"
                " older password"
            )

    # ---- the run ------------------------------------------------------------------------

    def _ready(self, name: str, generation: int | None = None, secret: int | None = None) -> bool:
        obj = self.latest.get(name)
        if obj is None:
            return False
        status = obj.get("status") or {}
        return (
            _conditions(obj).get("Ready", ("", ""))[0] == "True"
            and status.get("observedGeneration") == obj["metadata"]["generation"]
            and (generation is None or status.get("observedGeneration") == generation)
            and (secret is None or int(status.get("secretResourceVersion") or 0) >= secret)
        )

    def _wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    def run(self, ready_timeout: float = 300) -> Report:
        started = time.monotonic()
        threads = [
            threading.Thread(target=self._watch, daemon=True, name="invariant-watch"),
            threading.Thread(target=self._check_loop, daemon=True, name="invariant-check"),
        ]
        for thread in threads:
            thread.start()
        try:
            self._secret(SECRET, "shared;password", create=True)
            for name in self.hot:
                password = f"pw;{name}-initial"
                version = self._secret(f"{name}-sip", password, create=True)
                self.served[name].passwords.append((version, password))
            for index, name in enumerate(self.names):
                self._create_trunk(index, name)
            self._wait(
                lambda: all(self._ready(n) for n in self.names),
                ready_timeout,
                f"all {len(self.names)} trunks Ready",
            )
            self.log(f"{len(self.names)} trunks Ready after {time.monotonic() - started:.1f} s")
            self._mutate()
            self._wait(lambda: self.checks.empty(), 120, "the checker to catch up")
            self._final_checks()
        finally:
            self.stop.set()
            self.checks.put(None)
            for thread in threads:
                thread.join(15)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _mutate(self) -> None:
        for _ in range(self.actions):
            name = self.random.choice(self.hot)
            if self.random.random() < 0.3:
                secret = self._rotate(name)
                generation = None
            else:
                generation, secret = self._patch_codecs(name), None
            style = self.random.random()
            if style < 0.4:  # like `kubectl wait --for=condition=Ready`
                self._wait(
                    lambda n=name, g=generation, s=secret: self._ready(n, g, s),
                    120,
                    f"{name} Ready after {self.report.actions[-1]}",
                )
            elif style < 0.8:  # the next change lands while this one is being delivered
                time.sleep(self.random.uniform(0.05, 1.5))
        for name in self.hot:
            final = max(self.served[name].codecs)
            self._wait(lambda n=name, g=final: self._ready(n, g), 120, f"{name} Ready at the end")

    def _final_checks(self) -> None:
        for name in self.hot:
            status = self.latest[name].get("status") or {}
            self._check(
                name, int(status["observedGeneration"]), int(status["secretResourceVersion"])
            )
        time.sleep(1)  # Events are written right after the status they announce
        events = self.core.list_namespaced_event(self.namespace).items
        per_trunk: dict[str, Counter[str]] = defaultdict(Counter)
        for event in events:
            if event.involved_object.kind == "TwilioTrunk":
                per_trunk[event.involved_object.name][event.reason] += event.count or 1
        self.report.events = dict(per_trunk)
        for name in self.names:
            expected = self._expected_events(self.history[name])
            got = per_trunk.get(name, Counter())
            self.report.transitions[name] = sum(expected.values())
            if got != expected:
                self.report.event_problems.append(
                    f"{name}: Events {dict(got)} but its conditions changed {dict(expected)}"
                )
            if name not in self.hot and got != Counter({"Ready": 1, "ContextMissing": 1}):
                self.report.event_problems.append(
                    f"{name} (untouched): Events {dict(got)}, expected Ready and ContextMissing"
                )
            if any(c.get("Ready", ("", ""))[1] == "NoAsteriskPods" for c in self.history[name]):
                self.report.event_problems.append(f"{name}: was NoAsteriskPods")

    @staticmethod
    def _expected_events(history: list[dict[str, tuple[str, str]]]) -> Counter[str]:
        """The operator's documented rule: an Event when Ready or Degraded changes status or
        reason, except into `Delivering` and except Degraded clearing (Ready announces it)."""
        expected: Counter[str] = Counter()
        before: dict[str, tuple[str, str]] = {}
        for conditions in history:
            for kind, good in (("Ready", "True"), ("Degraded", "False")):
                now = conditions.get(kind)
                if now is None or before.get(kind) == now:
                    continue
                if now[1] == "Delivering" or (kind == "Degraded" and now[0] == good):
                    continue
                expected[now[1]] += 1
            before = conditions
        return expected
