"""The option table agrees with ocserv's sample.config and with the model classes."""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from trio_ocserv.config.model import PerUserConfig, Settings
from trio_ocserv.config.schema import (
    KEY_SPECS,
    MAIN,
    PER_USER_KEYS,
    RELOADABLE_KEYS,
    Scope,
)

SAMPLE = Path(__file__).resolve().parents[2] / "conf" / "sample.config"
_KEY_LINE = re.compile(r"^#? ?([a-z0-9-]+) =", re.MULTILINE)
_RELOAD_MARK = "### All configuration options below this line are reloaded on a SIGHUP."


def _sample_keys(text: str) -> list[str]:
    return list(dict.fromkeys(_KEY_LINE.findall(text)))


def test_every_sample_config_key_is_known() -> None:
    keys = _sample_keys(SAMPLE.read_text())
    assert len(keys) > 100
    assert [key for key in keys if key not in KEY_SPECS] == []


def test_reloadable_keys_follow_the_sample_config_marker() -> None:
    text = SAMPLE.read_text()
    before, after = text.split(_RELOAD_MARK)
    fixed = _sample_keys(before)
    assert "tcp-port" in fixed
    assert RELOADABLE_KEYS.isdisjoint(fixed)
    assert set(_sample_keys(after)) - set(fixed) <= RELOADABLE_KEYS


def test_per_user_keys_are_those_sample_config_lists() -> None:
    text = " ".join(SAMPLE.read_text().split())
    listed = text.split("The options allowed in the configuration files are ")[1].split(".")[0]
    words = {w.strip(" ,#") for w in listed.replace(" and ", ",").split(",")}
    words = {w.replace("# ", "") for w in words if w}
    expanded = set()
    for word in words:
        if word == "ipv?-network":
            expanded |= {"ipv4-network", "ipv6-network"}
        elif word == "rx/tx-data-per-sec":
            expanded |= {"rx-data-per-sec", "tx-data-per-sec"}
        else:
            expanded.add(word)
    # Also allowed: hostname (described right after the list), ipv6-subnet-prefix (goes with
    # ipv6-network) and ocserv's other names for dns/nbns.
    extra = {"hostname", "ipv6-subnet-prefix", "ipv4-dns", "ipv6-dns", "ipv4-nbns", "ipv6-nbns"}
    assert len(expanded) >= 27
    assert expanded | extra == PER_USER_KEYS


def test_every_field_exists_in_the_models() -> None:
    settings_fields = {f.name for f in attrs.fields(Settings)}
    per_user_fields = {f.name for f in attrs.fields(PerUserConfig)}
    for spec in KEY_SPECS.values():
        if spec.field is None or spec.field == "ipv4_netmask":
            continue
        if spec.scope & MAIN:
            assert spec.field in settings_fields, spec.key
        if Scope.PER_USER in spec.scope:
            assert spec.field in per_user_fields, spec.key


def test_every_settings_field_is_filled_by_some_key() -> None:
    filled = {spec.field for spec in KEY_SPECS.values()}
    assert {f.name for f in attrs.fields(Settings)} - filled == set()
