"""The DICOM network configuration file (dicomsvc/netconfig.py): its shape, checked whole at start."""

import json

import pytest

from dicomsvc.config import Config
from dicomsvc.netconfig import NetworkConfigError, Peer, load, parse

ISSUE_EXAMPLE = {
    "peers": [{"ae_title": "STORESCU", "host": "127.0.0.1", "anonymize": False, "user": "scanner1"}],
    "destinations": {
        "pacs": {"type": "dimse", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242},
        "research": {"type": "stowrs", "url": "http://127.0.0.1:8042/dicom-web", "token": None},
    },
    "rules": [{"match": {"Modality": "CT"}, "to": "pacs"}, {"to": "research", "anonymize": True}],
}


def test_the_issue_example_parses(tmp_path):
    path = tmp_path / "net.json"
    path.write_text(json.dumps(ISSUE_EXAMPLE))
    config = Config.from_env({"DICOMSVC_NETWORK_CONFIG": str(path), "DICOMSVC_DIMSE_PORT": "11112"})
    net = config.network_config
    assert config.dimse_port == 11112 and config.ae_title == "DICOMSVC"
    assert net.peers == (Peer("STORESCU", "127.0.0.1", False, "scanner1"),)
    assert net.destination("pacs").port == 4242 and net.destination("research").url == "http://127.0.0.1:8042/dicom-web"
    assert net.dimse_destination("ORTHANC").name == "pacs" and net.dimse_destination("NOPE") is None
    assert [(r.to, r.match, r.anonymize) for r in net.rules] == [("pacs", (("Modality", "CT"),), False), ("research", (), True)]


def test_without_settings_the_port_is_off_and_no_peer_may_associate():
    config = Config.from_env({})
    assert config.dimse_port is None and config.network_config.peers == ()
    assert config.network_config.peer("ANY", "127.0.0.1") is None


def test_peers_match_by_ae_title_and_host_when_given():
    net = parse({"peers": [{"ae_title": "CT1", "host": "10.0.0.5"}, {"ae_title": "WS"}]})
    assert net.peer("CT1", "10.0.0.5") and net.peer("CT1 ", "10.0.0.5")  # AE trailing spaces are padding
    assert net.peer("CT1", "10.0.0.6") is None and net.peer("ct1", "10.0.0.5") is None  # AE titles are case-sensitive
    assert net.peer("WS", "192.168.1.1") and net.peer("WS", None)



def test_a_peer_host_may_be_a_name_or_an_address_in_any_form():
    net = parse({"peers": [{"ae_title": "CT1", "host": "localhost"}, {"ae_title": "CT2", "host": "10.0.0.5"},
                           {"ae_title": "CT3", "host": "no-such-host.invalid"}]})  # fmt: skip
    assert net.peer("CT1", "127.0.0.1") and not net.peer("CT1", "10.0.0.9")  # resolved
    assert net.peer("CT2", "::ffff:10.0.0.5")  # an IPv4-mapped IPv6 peer address is its IPv4 address
    assert net.peer("CT3", "127.0.0.1") is None  # a name that does not resolve matches nothing


@pytest.mark.parametrize(
    "raw, message",
    [
        ([], "the file must be a JSON object"),
        ({"peer": []}, "unknown key 'peer'"),
        ({"peers": {}}, "peers must be a list"),
        ({"peers": [{"host": "x"}]}, "peers[0] has no ae_title"),
        ({"peers": [{"ae_title": ""}]}, "peers[0].ae_title must be an AE title"),
        ({"peers": [{"ae_title": "   "}]}, "peers[0].ae_title must be an AE title"),
        ({"peers": [{"ae_title": "A" * 17}]}, "peers[0].ae_title must be an AE title"),
        ({"peers": [{"ae_title": "A\\B"}]}, "peers[0].ae_title must be an AE title"),
        ({"peers": [{"ae_title": "A", "anonymize": "yes"}]}, "peers[0].anonymize must be true or false"),
        ({"peers": [{"ae_title": "A", "color": 1}]}, "peers[0]: unknown key 'color'"),
        ({"peers": [{"ae_title": "A"}, {"ae_title": "A"}]}, "peers[1] repeats AE title 'A'"),
        ({"destinations": {"x": {"type": "ftp"}}}, "destinations['x'].type must be 'dimse' or 'stowrs'"),
        ({"destinations": {"x": {"type": "dimse", "ae_title": "X", "host": "h", "port": 0}}}, ".port must be a TCP port"),
        ({"destinations": {"x": {"type": "dimse", "ae_title": "X", "port": 104}}}, ".host must be a host name"),
        ({"destinations": {"x": {"type": "stowrs", "url": "ftp://h/"}}}, ".url must be an http:// or https:// URL"),
        ({"destinations": {"bad name": {"type": "stowrs", "url": "http://h"}}}, "a destination name is"),
        ({"rules": [{"to": "pacs"}]}, "rules[0].to must name a destination"),
        ({"destinations": {"p": {"type": "stowrs", "url": "http://h"}}, "rules": [{"to": "p", "match": {"Modality": 1}}]},
         "rules[0].match: each key a DICOM keyword"),
    ],
)  # fmt: skip
def test_each_mistake_is_named(raw, message):
    with pytest.raises(ValueError) as caught:
        parse(raw)
    assert message in str(caught.value)


def test_the_file_missing_or_not_json_is_named(tmp_path):
    with pytest.raises(NetworkConfigError, match="SETTING: the file .*nope.json does not exist"):
        load(tmp_path / "nope.json", "SETTING")
    (tmp_path / "bad.json").write_text("{\n  'peers': []\n}")
    with pytest.raises(NetworkConfigError, match=r"bad.json is not JSON \(line 2, column 3"):
        load(tmp_path / "bad.json", "SETTING")
    (tmp_path / "wrong.json").write_text('{"peers": [{"ae_title": 7}]}')
    with pytest.raises(ValueError, match="wrong.json: peers.0..ae_title must be an AE title"):
        Config.from_env({"DICOMSVC_NETWORK_CONFIG": str(tmp_path / "wrong.json")})


def test_ae_title_and_limits_settings():
    assert Config.from_env({"DICOMSVC_AE_TITLE": " PACS1 "}).ae_title == "PACS1"
    with pytest.raises(ValueError, match="DICOMSVC_AE_TITLE must be an AE title"):
        Config.from_env({"DICOMSVC_AE_TITLE": "X" * 17})
    with pytest.raises(ValueError, match="DICOMSVC_DIMSE_PORT must be a TCP port"):
        Config.from_env({"DICOMSVC_DIMSE_PORT": "70000"})
    config = Config.from_env({"DICOMSVC_DIMSE_MAX_ASSOCIATIONS": "3", "DICOMSVC_DIMSE_MAX_PDU": "16384"})
    assert (config.dimse_max_associations, config.dimse_max_pdu) == (3, 16384)


def test_tokens_are_never_logged(tmp_path, caplog):
    import logging

    raw = {"destinations": {"r": {"type": "stowrs", "url": "http://h/dicom-web", "token": "s3cret-token"}}}
    path = tmp_path / "net.json"
    path.write_text(json.dumps(raw))
    config = Config.from_env({"DICOMSVC_NETWORK_CONFIG": str(path)})
    assert "s3cret" not in repr(config)
    with caplog.at_level(logging.INFO):
        config.log(logging.getLogger("dicomsvc"))
    assert "s3cret" not in caplog.text and "1 destination(s)" in caplog.text


def test_docker_compose_exposes_the_dimse_port_with_a_valid_peer_file():
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parent.parent
    api = yaml.safe_load((repo / "docker-compose.yml").read_text())["services"]["dicomsvc"]
    assert "11112:11112" in api["ports"] and api["environment"]["DICOMSVC_DIMSE_PORT"].endswith("11112}")
    mounted = [v for v in api["volumes"] if v.endswith(":" + api["environment"]["DICOMSVC_NETWORK_CONFIG"] + ":ro")]
    (volume,) = mounted
    net = load(repo / volume.split(":")[0], "compose")
    assert net.peer("STORESCU", "172.18.0.1") and net.peer("ORTHANC", "10.0.0.2")
