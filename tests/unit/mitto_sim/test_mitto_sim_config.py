import pytest
from mitto_sim.settings import ConfigError, SimConfig, SimSettings, merge_config


def test_merge_replaces_only_the_given_fields() -> None:
    merged = merge_config(SimConfig(), {"reject_share": 0.01, "webhook_headers": {"X-Secret": "s"}})
    assert merged.reject_share == 0.01
    assert merged.webhook_headers == {"X-Secret": "s"}
    assert merged.dlr_delay_ms == SimConfig().dlr_delay_ms


@pytest.mark.parametrize(
    ("patch", "complaint"),
    [
        ({"reject_shares": 0.1}, "unknown config fields: reject_shares"),
        ({"api_key": "k"}, "unknown config fields: api_key"),
        ({"http_429_share": 1.5}, "http_429_share"),
        ({"dlr_batch_size": 0}, "dlr_batch_size"),
        ({"latency_ms": "slow"}, "latency_ms"),
        ({"http_429_share": 0.6, "timeout_share": 0.6}, "must not exceed 1"),
        ([1, 2], "JSON object"),
    ],
)
def test_merge_refuses_unknown_or_invalid_fields(patch: object, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        merge_config(SimConfig(), patch)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MITTO_SIM_PORT", "9999")
    monkeypatch.setenv("MITTO_SIM_REJECT_SHARE", "0.25")
    monkeypatch.setenv("MITTO_SIM_WEBHOOK_HEADERS", '{"X-Secret": "s"}')
    settings = SimSettings()
    assert settings.port == 9999
    assert settings.runtime().reject_share == 0.25
    assert settings.runtime().webhook_headers == {"X-Secret": "s"}
