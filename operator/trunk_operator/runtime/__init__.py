"""The running operator: the controller (one reconcile loop per namespace), a delivery worker
per pod, the observer, readiness gates, the status writer, metrics, settings and the threads
its blocking calls run on. The Kopf handlers (`trunk_operator.handlers`) only feed it."""
