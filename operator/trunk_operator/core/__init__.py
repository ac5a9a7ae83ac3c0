"""The pure core: models (the CRDs' source), rendering, planning, a pod's desired set, what
Asterisk printed (parsers), verification and the status reducer. No I/O and no client: every
function takes values and returns values, so each is tested without a cluster or a pod."""
