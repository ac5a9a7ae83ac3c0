"""The Asterisk trunk operator: TwilioTrunk and DIDSegment resources served by Asterisk pods.

A change travels down the sub-packages in this order:

    handlers (Kopf events) -> runtime.controller (plan, store, write) -> core.plan + core.render
    -> runtime.pod_workers -> pod.channel (exec: deliver, reload) -> core.verify
    -> core.status (the reducer) -> runtime.status_writer (CR status, Events)

`core` is pure (no I/O, no client), `kube` talks to the API server, `pod` talks to Asterisk
through exec, and `runtime` schedules them. docs/architecture.md has the map.
"""
