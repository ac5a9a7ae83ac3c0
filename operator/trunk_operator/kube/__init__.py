"""The Kubernetes side: a small API and exec client (`client`), the operator's own calls on
it (`api`: rendered state, statuses, Events, finalizers, pods, Secrets), the exec types the
pod channel is given (`exec`) and leader election (`leader`)."""
