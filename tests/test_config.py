from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from rtgate.catalog import Catalog
from rtgate.config import GEMINI_LIVE_URL, load_settings, loopback_url, model_family
from rtgate.errors import ConfigError, ModelNotFound


def test_defaults_without_a_provider_key_use_the_local_engine() -> None:
    s = load_settings(None, {})
    assert s.default_upstream == "local"
    assert s.models["gpt-realtime"].upstream == "local"
    assert Catalog(s).resolve("gpt-realtime").price_key == "local"
    assert (s.host, s.port, s.home) == ("127.0.0.1", 8080, Path(".rtgate"))
    assert s.resolved_database_url.startswith("sqlite:///")


def test_provider_key_switches_catalog_models_to_openai() -> None:
    s = load_settings(None, {"OPENAI_API_KEY": "sk-abc"})
    assert s.default_upstream == "openai"
    assert s.upstreams["openai"].api_key is not None
    assert "sk-abc" not in msgspec.json.encode(s, enc_hook=str).decode()


def test_file_then_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "rtgate.toml"
    cfg.write_text(
        'port = 9000\nhost = "0.0.0.0"\n[upstreams.openai]\n'
        'base_url = "wss://example.invalid/v1"\norganization = "org-1"\n'
        '[prices.gpt-realtime]\ntext_in = "5"\n'
        '[models.my-voice]\nupstream = "openai"\nupstream_model = "gpt-realtime"\n'
    )
    s = load_settings(cfg, {"RTGATE_PORT": "9100", "RTGATE_OPENAI_BASE_URL": "ws://127.0.0.1:1/v1"})
    assert (s.port, s.host) == (9100, "0.0.0.0")
    assert s.upstreams["openai"].base_url == "ws://127.0.0.1:1/v1"
    assert s.upstreams["openai"].organization == "org-1"
    assert s.prices["gpt-realtime"].text_in == 5
    assert s.prices["gpt-realtime"].text_out == 16
    route = Catalog(s).resolve("my-voice")
    assert (route.upstream_model, route.price_key) == ("gpt-realtime", "gpt-realtime")


def test_config_via_rtgate_config_env(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("workers = 3\n")
    assert load_settings(None, {"RTGATE_CONFIG": str(cfg)}).workers == 3


@pytest.mark.parametrize(
    ("text", "env", "names"),
    [
        ("port = 99999\n", {}, "port"),
        ("", {"RTGATE_PORT": "eighty"}, "port"),
        ("max_session_seconds = -1\n", {}, "max_session_seconds"),
        ('[upstreams.openai]\nbase_url = "ftp://x"\n', {}, "upstreams.openai.base_url"),
        ('[upstreams.openai]\napi_key = "sk-in-file"\n', {}, "api_key_env"),
        ('[models.x]\nupstream = "nowhere"\n', {}, "models.x.upstream"),
        # A row named and missing made the model free, silently (a newcomer's find).
        (
            '[models.x]\nupstream = "openai"\nprices = "nosuchrow"\n',
            {},
            "models.x.prices: no price row named 'nosuchrow'",
        ),
        ("bogus_setting = 1\n", {}, "bogus_setting"),
        # A path given as another TOML type: refused at the setting, not a traceback.
        ("home = 5\n", {}, "home: Expected `str`, got `int`"),
        ("tls_certfile = 5\n", {}, "tls_certfile"),
        ("port = \n", {}, "not valid TOML"),
        ('[prices.x]\nrate = "0.01"\n', {}, "prices.x"),
        ('[prices.x]\nstandby_rate = "0.01"\n', {}, "standby_rate: is per second or minute"),
        # A newcomer's find: "contains unknown field", where an upstream's says where it goes.
        ('api_key = "sk-x"\n', {}, "api_key: provider keys are read from the environment"),
        ('[prices.x]\nunit = "hour"\nrate = "0.6"\n', {}, "prices.x.unit"),
        # The old spelling of a per-minute row says what replaced it.
        ('[prices.whisper-1]\nper_minute = "0.006"\n', {}, 'unit = "minute"'),
        # A newcomer's finds: taken, then a traceback or a negative bill.
        ('[prices.local]\ntext_in = "-1"\n', {}, "prices.local.text_in: a price is"),
        ('[prices.local]\nmarkup_percent = "-101"\n', {}, "prices.local.markup_percent"),
        (
            "",
            {"RTGATE_DATABASE_URL": "mysql://x/y"},
            "database_url (RTGATE_DATABASE_URL): expected sqlite",
        ),
        # A security audit's suspicion: spaces alone turned the console on.
        ("", {"RTGATE_ADMIN_TOKEN": "  "}, "RTGATE_ADMIN_TOKEN: a token of spaces alone"),
        ("", {"RTGATE_METRICS_TOKEN": "\t"}, "RTGATE_METRICS_TOKEN: a token of spaces alone"),
    ],
)
def test_bad_config_names_the_setting(
    tmp_path: Path, text: str, env: dict[str, str], names: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env)
    assert names in err.value.message


def test_an_empty_database_url_is_the_default(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('database_url = ""\n')
    settings = load_settings(cfg, {})
    assert settings.database_url is None
    assert settings.resolved_database_url.startswith("sqlite:///")


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings("/nonexistent/rtgate.toml", {})


def test_families_and_unknown_models() -> None:
    assert model_family("gpt-realtime-mini-2025-10-06") == "gpt-realtime-mini"
    assert model_family("gpt-realtime") == "gpt-realtime"
    cat = Catalog(load_settings(None, {"OPENAI_API_KEY": "k"}))
    r = cat.resolve("gpt-realtime-mini-2025-12-15")
    assert (r.price_key, r.upstream_model) == ("gpt-realtime-mini", "gpt-realtime-mini-2025-12-15")
    with pytest.raises(ModelNotFound):
        cat.resolve("gpt-4o-realtime-preview")


def test_the_openai_key_goes_only_to_the_openai_upstream(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[upstreams.azure]\nkind = "azure"\nbase_url = "wss://r.example/openai/v1"\n'
        '[upstreams.lab]\nbase_url = "ws://10.0.0.1/v1"\n'
        '[upstreams.az2]\nkind = "azure"\nbase_url = "wss://r2.example/openai/v1"\n'
        'api_key_env = "AZ2_KEY"\n'
    )
    s = load_settings(cfg, {"OPENAI_API_KEY": "sk-openai", "AZ2_KEY": "az2-secret"})
    assert s.upstreams["openai"].api_key is not None
    assert s.upstreams["azure"].api_key is None
    assert s.upstreams["lab"].api_key is None
    key = s.upstreams["az2"].api_key
    assert key is not None and key.get_secret_value() == "az2-secret"


def test_a_model_the_local_engine_serves_is_free_unless_the_operator_prices_it(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        # Routed to the engine although an OpenAI key is set: not OpenAI's price for the name.
        '[models.gpt-realtime]\nupstream = "local"\n'
        # Priced on purpose: the operator's row, on the engine as anywhere.
        '[models.rehearsal]\nupstream = "local"\nupstream_model = "gpt-realtime"\n'
        'prices = "gpt-realtime-mini"\n'
    )
    cat = Catalog(load_settings(cfg, {"OPENAI_API_KEY": "sk-x"}))
    assert cat.resolve("gpt-realtime").price_key == "local"
    assert cat.resolve("gpt-realtime-2025-08-28").price_key == "local"
    assert cat.resolve("rehearsal").price_key == "gpt-realtime-mini"
    assert cat.resolve("gpt-realtime-mini").price_key == "gpt-realtime-mini"  # still OpenAI's
    local = Catalog(load_settings(None, {}))
    assert [local.resolve(m).price_key for m in ("gpt-realtime", "local", None)] == ["local"] * 3


def test_duration_models_have_rows_at_their_list_prices() -> None:
    prices = load_settings(None, {}).prices
    rows = {
        name: (prices[name].unit, prices[name].rate)
        for name in (
            "gpt-realtime-whisper",
            "gpt-live-transcribe",
            "gpt-transcribe",
            "whisper-1",
            "gpt-realtime-translate",
            "gpt-live-1",
            "gpt-live-1.1",
        )
    }
    assert rows == {
        "gpt-realtime-whisper": ("minute", Decimal("0.017")),
        "gpt-live-transcribe": ("minute", Decimal("0.017")),
        "gpt-transcribe": ("minute", Decimal("0.0045")),
        "whisper-1": ("minute", Decimal("0.006")),
        "gpt-realtime-translate": ("minute", Decimal("0.034")),
        "gpt-live-1": ("minute", Decimal("0.05")),
        "gpt-live-1.1": ("minute", Decimal("0.05")),
    }
    assert (prices["gpt-realtime"].unit, prices["gpt-4o-transcribe"].unit) == ("token", "token")


def test_price_rows_are_overridden_in_their_unit_or_replaced_in_another(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        # The default's unit kept: only what the file names changes.
        '[prices.gpt-live-transcribe]\nmarkup_percent = "20"\n'
        '[prices.whisper-1]\nrate = "0.007"\n'
        # Another unit: the default row is replaced, its token rates gone.
        '[prices.gpt-4o-transcribe]\nunit = "second"\nrate = "0.0001"\n'
        '[prices.gpt-live-1]\nunit = "second"\nrate = "0.001"\n'
        # A row of the operator's own, per second.
        '[prices.my-asr]\nunit = "second"\nrate = "0.0002"\n'
        # Token rates on a duration row: it prices both.
        '[prices.gpt-realtime-whisper]\naudio_in = "3"\n'
    )
    p = load_settings(cfg, {}).prices
    live_tr = p["gpt-live-transcribe"]
    assert (live_tr.unit, live_tr.rate, live_tr.markup_percent) == ("minute", Decimal("0.017"), 20)
    assert (p["whisper-1"].unit, p["whisper-1"].rate) == ("minute", Decimal("0.007"))
    gpt4o = p["gpt-4o-transcribe"]
    assert (gpt4o.unit, gpt4o.rate, gpt4o.text_in, gpt4o.audio_in) == (
        "second",
        Decimal("0.0001"),
        0,
        0,
    )
    assert (p["gpt-live-1"].unit, p["gpt-live-1"].rate) == ("second", Decimal("0.001"))
    assert (p["my-asr"].unit, p["my-asr"].rate) == ("second", Decimal("0.0002"))
    whisper_rt = p["gpt-realtime-whisper"]
    assert (whisper_rt.unit, whisper_rt.rate, whisper_rt.audio_in) == (
        "minute",
        Decimal("0.017"),
        3,
    )


@pytest.mark.parametrize(
    ("asked", "row", "unit"),
    [
        ("gpt-realtime-2025-08-28", "gpt-realtime", "token"),
        ("gpt-4o-mini-transcribe-2025-12-15", "gpt-4o-mini-transcribe", "token"),
        ("gpt-live-transcribe-2026-10-01", "gpt-live-transcribe", "minute"),
        ("gpt-realtime-whisper-2026-09-30", "gpt-realtime-whisper", "minute"),
        ("gpt-live-1.1-2026-11-20", "gpt-live-1.1", "minute"),
        ("my-asr-2026-01-01", "my-asr", "second"),
    ],
)
def test_a_dated_snapshot_prices_as_its_family_in_any_unit(
    tmp_path: Path, asked: str, row: str, unit: str
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[prices.my-asr]\nunit = "second"\nrate = "0.0002"\n')
    key, prices = Catalog(load_settings(cfg, {"OPENAI_API_KEY": "k"})).price_row(asked)
    assert prices is not None and (key, prices.unit) == (row, unit)


def test_a_gemini_upstream_defaults_to_googles_endpoint_and_key_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[upstreams.g]\nkind = "gemini"\n\n'
        '[models.gemini-live]\nupstream = "g"\nupstream_model = "gemini-3.8-live"\n'
    )
    s = load_settings(cfg, {"GEMINI_API_KEY": "AIza-gemini", "OPENAI_API_KEY": "sk-openai"})
    up = s.upstreams["g"]
    assert up.base_url == GEMINI_LIVE_URL
    assert up.api_key_env == "GEMINI_API_KEY"
    assert up.api_key is not None and up.api_key.get_secret_value() == "AIza-gemini"
    # Priced by the model it runs, per modality.
    route = Catalog(s).resolve("gemini-live")
    assert route.price_key == "gemini-3.8-live"
    assert route.prices is not None
    assert (route.prices.text_in, route.prices.audio_in) == (Decimal("0.75"), Decimal("3.00"))
    assert (route.prices.text_out, route.prices.audio_out) == (Decimal("4.50"), Decimal("12.00"))
    # No gemini upstream unless one is configured or its URL is overridden.
    assert "gemini" not in load_settings(None, {}).upstreams


def test_rtgate_gemini_base_url_overrides_or_creates_the_gemini_upstream(tmp_path: Path) -> None:
    s = load_settings(None, {"RTGATE_GEMINI_BASE_URL": "ws://127.0.0.1:9"})
    up = s.upstreams["gemini"]
    assert (up.kind, up.base_url, up.api_key_env) == (
        "gemini",
        "ws://127.0.0.1:9",
        "GEMINI_API_KEY",
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text('[upstreams.gemini]\nkind = "gemini"\napi_key_env = "MY_GEMINI"\n')
    s = load_settings(cfg, {"RTGATE_GEMINI_BASE_URL": "wss://proxy.example", "MY_GEMINI": "k"})
    assert s.upstreams["gemini"].base_url == "wss://proxy.example"
    assert s.upstreams["gemini"].api_key is not None


def test_a_gemini_key_is_never_read_from_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[upstreams.gemini]\nkind = "gemini"\napi_key = "AIza-in-file"\n')
    with pytest.raises(ConfigError, match="api_key_env"):
        load_settings(cfg, {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("on", True), ("Yes", True), ("0", False), ("off", False)],
)
def test_environment_strings_become_numbers_and_booleans(value: str, expected: bool) -> None:
    s = load_settings(
        None,
        {"RTGATE_PORT": "9001", "RTGATE_DRAIN_SECONDS": "2.5", "RTGATE_PERMESSAGE_DEFLATE": value},
    )
    assert (s.port, s.drain_seconds, s.permessage_deflate) == (9001, 2.5, expected)
    with pytest.raises(ConfigError, match="permessage_deflate"):
        load_settings(None, {"RTGATE_PERMESSAGE_DEFLATE": "maybe"})
    with pytest.raises(ConfigError, match="port"):
        load_settings(None, {"RTGATE_PORT": "80.5"})


def test_settings_never_show_a_secret() -> None:
    env = {
        "OPENAI_API_KEY": "sk-hidden",
        "RTGATE_ADMIN_TOKEN": "adm-hidden",
        "RTGATE_TRUSTED_PROXIES": "10.0.0.0/8",
    }
    s = load_settings(None, env)
    assert s.upstreams["openai"].api_key is not None
    assert s.upstreams["openai"].api_key.get_secret_value() == "sk-hidden"
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "adm-hidden"
    for shown in (repr(s), str(s.admin_token), msgspec.json.encode(s, enc_hook=str)):
        assert "hidden" not in str(shown)


def test_an_operator_token_is_read_as_a_bearer_header_carries_it() -> None:
    """A review's find: a token read from a secret file kept its newline, so no request could
    send it, and each try counted against the operator's own address."""
    s = load_settings(None, {"RTGATE_ADMIN_TOKEN": "adm-token\n", "RTGATE_METRICS_TOKEN": " m "})
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "adm-token"
    assert s.metrics_token is not None and s.metrics_token.get_secret_value() == "m"


def test_settings_are_frozen() -> None:
    s = load_settings(None, {})
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_a_listener_on_every_interface_is_dialled_on_loopback() -> None:
    assert loopback_url("ws", "0.0.0.0", 8080, "/v1") == "ws://127.0.0.1:8080/v1"
    assert loopback_url("ws", "::", 9, "/e") == "ws://127.0.0.1:9/e"
    assert loopback_url("wss", "::1", 443, "/v1") == "wss://[::1]:443/v1"
    assert loopback_url("ws", "10.0.0.5", 80, "") == "ws://10.0.0.5:80"


def test_a_key_may_be_granted_routed_and_priced_models_not_the_engines_price_row() -> None:
    s = load_settings(None, {"OPENAI_API_KEY": "k"})
    cat = Catalog(s)
    assert cat.knows("whisper-1") and cat.knows("gpt-realtime-mini-2025-12-15")
    assert cat.knows("local")  # routed to the engine by default
    unrouted = Catalog(
        msgspec.structs.replace(s, models={k: v for k, v in s.models.items() if k != "local"})
    )
    # ``[prices.local]`` prices what the engine serves; it names no model a key could use.
    assert not unrouted.knows("local") and "local" not in unrouted.names()
    assert "whisper-1" in unrouted.names()
    # A default price row no model routes (Gemini's) is no model a key could use (a review's
    # find: the console offered it); transcription models are taken by their exact names, as
    # the engine takes them.
    assert not cat.knows("gemini-3.8-live") and "gemini-3.8-live" not in cat.names()
    assert cat.transcribes("gpt-4o-mini-transcribe-2025-12-15")
    assert not cat.transcribes("gpt-4o-transcribe-2025-03-20")


def test_a_bad_setting_from_the_environment_names_its_variable(tmp_path: Path) -> None:
    # A newcomer's find: "port: Expected `int`, got `str`" sent them through a config file.
    with pytest.raises(ConfigError, match=r"port \(RTGATE_PORT\): Expected `int`, got `str`"):
        load_settings(None, {"RTGATE_PORT": "abc"})
    cfg = tmp_path / "c.toml"
    cfg.write_text('port = "abc"\n')
    with pytest.raises(ConfigError) as from_file:
        load_settings(cfg, {})
    assert "invalid configuration: port: " in from_file.value.message
