"""The operator's settings come from the environment the chart sets, parsed in one place."""

from trunk_operator.runtime.settings import Settings


def test_defaults_when_the_environment_sets_nothing() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.default_selector == {"app": "asterisk"}
    assert settings.watch_namespaces == ()
    assert not settings.leader_election
    assert settings.metrics_port == 0


def test_the_charts_variables_are_read() -> None:
    settings = Settings.from_env(
        {
            "TRUNKOP_WATCH_NAMESPACES": " voice, ,sip-b ",
            "TRUNKOP_DEFAULT_SELECTOR": "app=pbx,tier=edge,junk",
            "TRUNKOP_CONTAINER": "pbx",
            "TRUNKOP_OBSERVE_INTERVAL": "2.5",
            "TRUNKOP_LEADER_ELECTION": "True",
            "POD_NAMESPACE": "ops",
            "HOSTNAME": "op-0",
            "TRUNKOP_METRICS_PORT": "8081",
        }
    )
    assert settings.watch_namespaces == ("voice", "sip-b")
    assert settings.default_selector == {"app": "pbx", "tier": "edge"}
    assert settings.container == "pbx"
    assert settings.observe_interval == 2.5
    assert settings.leader_election
    assert (settings.pod_namespace, settings.hostname) == ("ops", "op-0")
    assert settings.metrics_port == 8081
