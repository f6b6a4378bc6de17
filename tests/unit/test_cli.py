"""Envoy's command line: defaults, Istio's flags, both value forms, and Envoy's errors and exit codes."""

from __future__ import annotations

import io
import os

import pytest

from sidecar import __version__
from sidecar.cli import DEFAULT_LOG_FORMAT, Options, parse_args


def run(argv: list[str]) -> tuple[int | str | None, str, str]:
    """(exit code or None, stdout, stderr) of parse_args."""
    out, err = io.StringIO(), io.StringIO()
    try:
        parse_args(argv, prog="envoy", stdout=out, stderr=err)
    except SystemExit as e:
        return e.code, out.getvalue(), err.getvalue()
    return None, out.getvalue(), err.getvalue()


def test_defaults_are_envoys() -> None:
    o = parse_args([])
    assert o.config_path == "" and o.config_yaml == ""
    assert o.mode == "serve"
    assert o.concurrency == (os.cpu_count() or 1)
    assert o.log_level == "info"
    assert o.component_log_level == ()
    assert o.log_format == DEFAULT_LOG_FORMAT
    assert o.drain_time_s == 600
    assert o.drain_strategy == "gradual"
    assert o.parent_shutdown_time_s == 900
    assert o.local_address_ip_version == "v4"
    assert o.file_flush_interval_msec == 10000
    assert o.allow_unknown_static_fields is False
    assert o.socket_path == "@envoy_domain_socket" and o.socket_mode == 0
    assert o.base_id == 0 and o.restart_epoch == 0


def test_istio_pilot_agent_command_line() -> None:
    # The arguments pilot-agent passes (istio/istio pkg/envoy/proxy.go).
    argv = [
        "-c",
        "etc/istio/proxy/envoy-rev.json",
        "--drain-time-s",
        "45",
        "--drain-strategy",
        "immediate",
        "--local-address-ip-version",
        "v4",
        "--file-flush-interval-msec",
        "1000",
        "--disable-hot-restart",
        "--allow-unknown-static-fields",
        "-l",
        "warning",
        "--component-log-level",
        "misc:error",
        "--concurrency",
        "2",
    ]
    o = parse_args(argv)
    assert o == Options(
        config_path="etc/istio/proxy/envoy-rev.json",
        drain_time_s=45,
        drain_strategy="immediate",
        local_address_ip_version="v4",
        file_flush_interval_msec=1000,
        disable_hot_restart=True,
        allow_unknown_static_fields=True,
        log_level="warning",
        component_log_level=(("misc", "error"),),
        concurrency=2,
    )


def test_equals_form_and_long_names() -> None:
    o = parse_args(
        [
            "--config-path=/etc/envoy.yaml",
            "--config-yaml={admin: {}}",
            "--log-level=debug",
            "--concurrency=3",
            "--service-cluster=c",
            "--service-node=n",
            "--service-zone=z",
            "--mode=validate",
        ]
    )
    assert (o.config_path, o.config_yaml, o.log_level, o.concurrency) == (
        "/etc/envoy.yaml",
        "{admin: {}}",
        "debug",
        3,
    )
    assert (o.service_cluster, o.service_node, o.service_zone, o.mode) == ("c", "n", "z", "validate")


def test_moot_flags_are_accepted_and_kept() -> None:
    o = parse_args(
        [
            "--base-id",
            "7",
            "--use-dynamic-base-id",
            "--base-id-path",
            "/tmp/id",
            "--parent-shutdown-time-s",
            "5",
            "--enable-mutex-tracing",
            "--enable-core-dump",
            "--disable-extensions",
            "envoy.a,envoy.b",
            "--admin-address-path",
            "/tmp/admin",
            "--socket-path",
            "/tmp/sock",
            "--socket-mode",
            "644",
            "--stats-tag",
            "mesh:one",
            "--stats-tag",
            "zone:a:b",
            "--log-path",
            "/tmp/log",
            "--log-format",
            "%v",
            "--log-format-escaped",
            "--reject-unknown-dynamic-fields",
            "--ignore-unknown-dynamic-fields",
            "--enable-fine-grain-logging",
            "--skip-hot-restart-on-no-parent",
            "--skip-hot-restart-parent-stats",
            "--skip-deprecated-logs",
            "--log-stacktrace-single-entry",
            "--file-flush-min-size-kb",
            "8",
        ]
    )
    assert o.base_id == 7 and o.use_dynamic_base_id and o.base_id_path == "/tmp/id"
    assert o.parent_shutdown_time_s == 5 and o.enable_mutex_tracing and o.enable_core_dump
    assert o.disable_extensions == ("envoy.a", "envoy.b")
    assert o.admin_address_path == "/tmp/admin"
    assert o.socket_path == "/tmp/sock" and o.socket_mode == 0o644
    # Only the first ':' splits: a tag value may hold more.
    assert o.stats_tags == (("mesh", "one"), ("zone", "a:b"))
    assert (o.log_path, o.log_format, o.log_format_escaped) == ("/tmp/log", "%v", True)
    assert o.reject_unknown_dynamic_fields and o.ignore_unknown_dynamic_fields
    assert o.file_flush_min_size_kb == 8


@pytest.mark.parametrize("marker", ["--", "--ignore_rest"])
def test_ignore_rest(marker: str) -> None:
    # TCLAP's "--, --ignore_rest": whatever follows is not parsed.
    o = parse_args(["--concurrency", "2", marker, "--bogus", "x"])
    assert o.concurrency == 2


def test_deprecated_allow_unknown_fields_is_the_static_flag() -> None:
    assert parse_args(["--allow-unknown-fields"]).allow_unknown_static_fields is True


@pytest.mark.parametrize(("text", "level"), [("warn", "warning"), ("trace", "trace"), ("off", "off")])
def test_log_levels(text: str, level: str) -> None:
    assert parse_args(["-l", text]).log_level == level


def test_component_log_levels() -> None:
    o = parse_args(["--component-log-level", "upstream:debug,config:trace,misc:warn"])
    assert o.component_log_level == (("upstream", "debug"), ("config", "trace"), ("misc", "warning"))


def test_concurrency_zero_means_one() -> None:
    # options_impl.cc: concurrency_ = std::max(1U, concurrency.getValue()).
    assert parse_args(["--concurrency", "0"]).concurrency == 1


def test_cpuset_threads_counts_the_affinity_mask() -> None:
    assert parse_args(["--cpuset-threads"]).concurrency == len(os.sched_getaffinity(0))
    # An explicit --concurrency wins over --cpuset-threads.
    assert parse_args(["--cpuset-threads", "--concurrency", "5"]).concurrency == 5


def test_init_only_mode_is_accepted() -> None:
    assert parse_args(["--mode", "init_only"]).mode == "init_only"


def test_options_are_frozen() -> None:
    o = parse_args([])
    with pytest.raises(AttributeError):
        o.mode = "validate"  # type: ignore[misc]


def test_unknown_flag_is_a_tclap_parse_error_with_exit_code_1() -> None:
    code, out, err = run(["--bogus"])
    assert code == 1
    assert out == ""
    assert err.startswith("PARSE ERROR: Argument: --bogus\n             Couldn't find match for argument\n")
    assert "Brief USAGE:" in err and "envoy --help" in err


def test_unknown_flag_with_value_and_stray_positional() -> None:
    assert run(["--bogus=1"])[0] == 1
    code, _, err = run(["stray"])
    assert code == 1 and "PARSE ERROR: Argument: stray" in err


def test_abbreviations_are_not_accepted() -> None:
    code, _, err = run(["--concur", "2"])
    assert code == 1 and "PARSE ERROR: Argument: --concur" in err


@pytest.mark.parametrize("value", ["abc", "-1", "4294967296"])
def test_unreadable_number(value: str) -> None:
    code, _, err = run(["--concurrency", value])
    assert code == 1
    assert err.startswith(
        f"PARSE ERROR: Argument: (--concurrency)\n             Couldn't read argument value from string '{value}'"
    )


def test_missing_value() -> None:
    code, _, err = run(["-c"])
    assert code == 1 and err.startswith(
        "PARSE ERROR: Argument: (--config-path)\n             Missing a value for this argument!"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-l", "nope"], "error: invalid log level specified 'nope'"),
        (["--component-log-level", "foo"], "error: component log level not correctly specified 'foo'"),
        (
            ["--component-log-level", "upstream:foo:bar"],
            "error: component log level not correctly specified 'upstream:foo:bar'",
        ),
        (["--component-log-level", "upstream:nope"], "error: invalid log level specified 'nope'"),
        (["--mode", "foo"], "error: unknown mode 'foo'"),
        (["--local-address-ip-version", "v5"], "error: unknown IP address version 'v5'"),
        (["--drain-strategy", "x"], "error: unknown drain-strategy 'x'"),
        (["--stats-tag", "a:b.c"], "error: misformatted stats-tag 'a:b.c' contains invalid char in 'b.c'"),
        (["--stats-tag", "a-b:c"], "error: misformatted stats-tag 'a-b:c' contains invalid char in 'a-b'"),
        (["--stats-tag", "nocolon"], "error: misformatted stats-tag 'nocolon'"),
        (
            ["--use-dynamic-base-id", "--restart-epoch", "1"],
            "error: cannot use --restart-epoch=1 with --use-dynamic-base-id",
        ),
        (["--socket-path", "/tmp/s", "--socket-mode", "9"], "error: invalid socket-mode '9'"),
    ],
)
def test_refused_values_print_envoys_error_and_exit_1(argv: list[str], message: str) -> None:
    code, out, err = run(argv)
    assert code == 1
    assert out == ""
    assert err == message + "\n"


def test_version_prints_envoy_shaped_line_and_exits_0() -> None:
    code, out, err = run(["--version"])
    assert code == 0
    assert err == ""
    assert out == f"\nenvoy  version: sidecar/{__version__}/Clean/RELEASE/OpenSSL\n\n"
    # Tools split Envoy's version on "/": the second field is the version number.
    assert out.split("version: ")[1].split("/")[1] == __version__


def test_hot_restart_version_reports_disabled() -> None:
    code, out, err = run(["--hot-restart-version"])
    assert (code, out, err) == (0, "", "disabled")


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0
    assert "--config-path" in capsys.readouterr().out
