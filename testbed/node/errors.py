"""The real node's one error type."""


class NodeError(RuntimeError):
    pass
