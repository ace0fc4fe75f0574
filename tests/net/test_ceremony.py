"""The key ceremony: files, modes, no overwrite, token hashes, TLS chain, federation file."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedcity.crypto import KeyShare
from fedcity.net.ceremony import (
    CeremonyError,
    deal_federation,
    load_federation,
    read_token,
    token_sha256,
)

AGENCIES = ["district-01", "district-02", "district-03"]


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    out = tmp_path_factory.mktemp("ceremony") / "federation"
    files = deal_federation(out, AGENCIES, 2, key_bits=512, scientists=("analyst", "auditor"))
    return files


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_layout_and_modes(fed):
    root = fed.root
    assert fed.public == root / "federation-public.json"
    assert fed.credentials == root / "coordinator" / "credentials.json"
    assert fed.ca_cert == root / "tls" / "ca.pem"
    for a in AGENCIES:
        assert fed.shares[a] == root / "agencies" / a / "share.json"
        assert fed.agency_tokens[a] == root / "agencies" / a / "token"
        assert _mode(fed.shares[a]) == 0o600
        assert _mode(fed.agency_tokens[a]) == 0o600
        assert _mode(fed.shares[a].parent) == 0o700
        assert fed.signing_keys[a] == root / "agencies" / a / "signing-key.json"
        assert _mode(fed.signing_keys[a]) == 0o600
    for s in ("analyst", "auditor"):
        assert _mode(fed.scientist_tokens[s]) == 0o600
    assert _mode(fed.server_key) == 0o600
    assert _mode(fed.credentials) == 0o600
    assert _mode(fed.public) == 0o644
    assert _mode(fed.ca_cert) == 0o644
    assert _mode(fed.server_cert) == 0o644
    written = sorted(p for p in root.rglob("*") if p.is_file())
    assert written == sorted(fed.all_paths())  # nothing else: no CA key, no full secret


def test_public_file_and_shares_agree(fed):
    data = json.loads(fed.public.read_text())
    assert data["format"] == "fedcity.federation"
    assert data["version"] == 1
    assert data["agencies"] == {"district-01": 1, "district-02": 2, "district-03": 3}
    federation = load_federation(fed.public)
    assert federation.threshold == 2
    assert federation.threshold_key.parties == 3
    for a in AGENCIES:
        share = KeyShare.load(fed.shares[a])
        assert share.threshold_key.key_id == federation.key_id
        assert share.index == federation.agencies[a]
    assert "share" not in data["threshold_public_key"] and "share" not in data


def test_signing_keys_are_dealt_per_agency_and_listed_publicly(fed):
    from fedcity.crypto.signing import SigningKey, Statement

    federation = load_federation(fed.public)
    assert set(federation.signing_keys) == set(AGENCIES)
    public_text = fed.public.read_text()
    for a in AGENCIES:
        agency, key = SigningKey.load(fed.signing_keys[a])
        assert agency == a and federation.signing_keys[a] == key.public_key
        assert json.loads(fed.signing_keys[a].read_text())["seed"] not in public_text
        statement = Statement.for_payload("job", 0, "contribution", a, federation.key_id, b"x")
        signature = key.sign(statement)
        assert federation.signing_keys[a].verify(statement, signature)
        others = [b for b in AGENCIES if b != a]
        assert not any(federation.signing_keys[b].verify(statement, signature) for b in others)
    coordinator_bytes = b"".join(p.read_bytes() for p in fed.credentials.parent.iterdir())
    assert b"fedcity.ed25519.signing-key" not in coordinator_bytes


def test_tokens_and_credentials_hold_only_hashes(fed):
    tokens = {a: read_token(p) for a, p in fed.agency_tokens.items()}
    tokens |= {s: read_token(p) for s, p in fed.scientist_tokens.items()}
    assert len(set(tokens.values())) == len(tokens)
    for t in tokens.values():
        assert len(t) >= 43  # 32 random bytes, url-safe base64
        assert set(t) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    creds = json.loads(fed.credentials.read_text())
    principals = {p["name"]: p for p in creds["principals"]}
    assert set(principals) == set(tokens)
    assert {p["role"] for n, p in principals.items() if n in AGENCIES} == {"agency"}
    assert principals["analyst"]["role"] == principals["auditor"]["role"] == "scientist"
    for name, token in tokens.items():
        assert principals[name]["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
        assert principals[name]["token_sha256"] == token_sha256(token)
        assert set(principals[name]) == {"name", "role", "token_sha256"}
    coordinator_bytes = b"".join(p.read_bytes() for p in fed.credentials.parent.iterdir())
    for token in tokens.values():
        assert token.encode() not in coordinator_bytes
    assert b"fedcity.paillier.key-share" not in coordinator_bytes


def test_tls_chain_verifies_with_sans(fed):
    ca = x509.load_pem_x509_certificate(fed.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(fed.server_cert.read_bytes())
    key = serialization.load_pem_private_key(fed.server_key.read_bytes(), password=None)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=364) < lifetime < dt.timedelta(days=366)
    store = Store([ca])
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        chain = PolicyBuilder().store(store).build_server_verifier(name).verify(cert, [])
        assert chain[-1] == ca
    with pytest.raises(VerificationError):
        verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName("evil.test"))
        verifier.verify(cert, [])


def test_custom_tls_hosts(tmp_path):
    files = deal_federation(
        tmp_path, ["a", "b"], 1, key_bits=256, scientists=(), tls_hosts=("coord.city.test", "::1")
    )
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord.city.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]
    assert files.scientist_tokens == {}


def test_never_overwrites(tmp_path):
    first = deal_federation(tmp_path, ["a", "b"], 2, key_bits=256)
    before = {p: p.read_bytes() for p in first.all_paths()}
    with pytest.raises(CeremonyError, match="refusing to overwrite"):
        deal_federation(tmp_path, ["a", "b"], 2, key_bits=256)
    assert {p: p.read_bytes() for p in first.all_paths()} == before


def test_one_existing_file_stops_everything(tmp_path):
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "ca.pem").write_text("mine")
    with pytest.raises(CeremonyError, match=r"tls/ca\.pem"):
        deal_federation(tmp_path, ["a", "b"], 2, key_bits=256)
    assert not (tmp_path / "federation-public.json").exists()
    assert not (tmp_path / "agencies").exists()
    assert (tmp_path / "tls" / "ca.pem").read_text() == "mine"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"agencies": []}, "at least one agency"),
        ({"agencies": ["a", "a"]}, "unique"),
        ({"agencies": ["a", "analyst"]}, "unique"),
        ({"agencies": ["../etc"]}, "not a valid name"),
        ({"agencies": ["a b"]}, "not a valid name"),
        ({"scientists": [""]}, "not a valid name"),
        ({"threshold": 0}, r"threshold must lie in \[1, 2\]"),
        ({"threshold": 3}, r"threshold must lie in \[1, 2\]"),
        ({"key_bits": 1000}, "multiple of 16"),
        ({"tls_hosts": ["bad host!"]}, "neither an IP address nor a DNS name"),
        ({"tls_hosts": []}, "at least one host"),
    ],
)
def test_invalid_input(tmp_path, kwargs, match):
    args = {"agencies": ["a", "b"], "threshold": 2, "key_bits": 256} | kwargs
    with pytest.raises(CeremonyError, match=match):
        deal_federation(tmp_path, **args)
    assert not any(tmp_path.iterdir())


def _mutated(fed, tmp_path, mutate):
    data = json.loads(fed.public.read_text())
    mutate(data)
    path = tmp_path / "federation-public.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(format="other"), "format is 'other'"),
        (lambda d: d.pop("format"), "format is None"),
        (lambda d: d.update(version=2), "unsupported version 2"),
        (lambda d: d.update(version=True), "unsupported version True"),
        (lambda d: d.pop("threshold_public_key"), "threshold_public_key must be a JSON object"),
        (
            lambda d: d["threshold_public_key"].update(threshold=5),
            "invalid threshold_public_key",
        ),
        (
            lambda d: d["threshold_public_key"].update(n="ff"),
            "invalid threshold_public_key",
        ),
        (lambda d: d.update(agencies=[]), "agencies must be a non-empty object"),
        (lambda d: d.update(agencies={}), "agencies must be a non-empty object"),
        (lambda d: d["agencies"].update({"district-01": 4}), r"outside the key's share indices"),
        (  # index 0: outside the decryption committee; too few members left to decrypt
            lambda d: d["agencies"].update(dict.fromkeys(d["agencies"], 0)),
            r"only 0 agencies hold a share, fewer than the threshold",
        ),
        (lambda d: d["agencies"].update({"district-01": "1"}), "must be an integer"),
        (lambda d: d["agencies"].update({"district-01": True}), "must be an integer"),
        (lambda d: d["agencies"].update({"district-01": 2}), "both claim share 2"),
        (lambda d: d["agencies"].update({"bad name": 1}), "not a valid agency name"),
        (lambda d: d.pop("signing_keys"), "signing_keys must be an object.*deal a new"),
        (lambda d: d["signing_keys"].pop("district-02"), r"missing \['district-02'\]"),
        (
            lambda d: d["signing_keys"].update({"district-09": "00" * 32}),
            r"not an agency \['district-09'\]",
        ),
        (
            lambda d: d["signing_keys"].update({"district-01": "AB" * 32}),
            r"signing_keys\['district-01'\]: .*64 lowercase hex",
        ),
        (
            lambda d: d["signing_keys"].update({"district-01": d["signing_keys"]["district-03"]}),
            "'district-01' and 'district-03' list the same signing key",
        ),
    ],
)
def test_load_federation_errors(fed, tmp_path, mutate, match):
    path = _mutated(fed, tmp_path, mutate)
    with pytest.raises(CeremonyError, match=match) as info:
        load_federation(path)
    assert str(path) in str(info.value)


def test_load_federation_unreadable(tmp_path):
    with pytest.raises(CeremonyError, match="cannot read federation file"):
        load_federation(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CeremonyError, match=r"not valid JSON \(line 1"):
        load_federation(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(CeremonyError, match="must hold a JSON object"):
        load_federation(bad)


def test_read_token(tmp_path):
    p = tmp_path / "token"
    p.write_text("abc-DEF_123\n")
    p.chmod(0o600)
    assert read_token(p) == "abc-DEF_123"
    p.write_text("\n  \n")
    with pytest.raises(CeremonyError, match="is empty"):
        read_token(p)
    p.write_text("two words\n")
    with pytest.raises(CeremonyError, match="single token"):
        read_token(p)
    with pytest.raises(CeremonyError, match="cannot read token file"):
        read_token(tmp_path / "absent")


# -- single-key-holder federations ------------------------------------------------------------
@pytest.fixture(scope="module")
def kh_fed(tmp_path_factory):
    out = tmp_path_factory.mktemp("ceremony-kh") / "federation"
    return deal_federation(out, AGENCIES, 1, key_bits=512, key_holder="district-02")


def test_key_holder_layout_and_public_file(kh_fed):
    from fedcity.core.aggregation import KeyHolderScheme
    from fedcity.crypto import PrivateKey, PublicKey, load_key

    assert set(kh_fed.shares) == {"district-02"}
    assert set(kh_fed.public_keys) == {"district-01", "district-03"}
    private = load_key(kh_fed.shares["district-02"])
    assert isinstance(private, PrivateKey)
    assert _mode(kh_fed.shares["district-02"]) == 0o600
    for a in ("district-01", "district-03"):
        public = load_key(kh_fed.key_file(a))
        assert isinstance(public, PublicKey) and public.key_id == private.public_key.key_id
        assert not (kh_fed.root / "agencies" / a / "share.json").exists()
    text = kh_fed.public.read_text()
    assert '"p"' not in text and '"q"' not in text  # the factors are nowhere public
    fed = load_federation(kh_fed.public)
    assert fed.decryption == "key-holder" and fed.key_holder == "district-02"
    assert fed.threshold == 1 and fed.threshold_key is None
    assert fed.key_id == private.public_key.key_id
    assert fed.share_index_of(AGENCIES) == {"district-02": 1}
    assert isinstance(fed.scheme(blinding_key=bytes(32)), KeyHolderScheme)
    assert set(fed.signing_keys) == set(AGENCIES)  # every agency signs, key holder or not
    for a in AGENCIES:
        assert _mode(kh_fed.signing_keys[a]) == 0o600


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"key_holder": "nobody"}, "key holder 'nobody' is not one of the agencies"),
        ({"key_holder": "a", "threshold": 2}, "threshold must be 1"),
    ],
)
def test_key_holder_invalid_input(tmp_path, kwargs, match):
    args = {"agencies": ["a", "b"], "threshold": 1, "key_bits": 256} | kwargs
    with pytest.raises(CeremonyError, match=match):
        deal_federation(tmp_path, **args)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(decryption="magic"), "decryption must be 'threshold' or 'key-holder'"),
        (lambda d: d.pop("public_key"), "public_key must be a JSON object"),
        (lambda d: d["public_key"].update(n="ff"), "invalid public_key"),
        (lambda d: d.update(key_holder="nobody"), "key_holder must name one of the agencies"),
        (lambda d: d.pop("key_holder"), "key_holder must name one of the agencies"),
        (
            lambda d: d["agencies"].update({"district-01": 1}),
            r"agencies\['district-01'\] must be 0",
        ),
        (
            lambda d: d["agencies"].update({"district-02": 0}),
            r"agencies\['district-02'\] must be 1",
        ),
        (lambda d: d.pop("signing_keys"), "signing_keys must be an object"),
    ],
)
def test_load_key_holder_federation_errors(kh_fed, tmp_path, mutate, match):
    path = _mutated(kh_fed, tmp_path, mutate)
    with pytest.raises(CeremonyError, match=match) as info:
        load_federation(path)
    assert str(path) in str(info.value)


# -- each agency's folder is complete -----------------------------------------------------------
def test_agency_folder_is_complete(fed):
    from fedcity.net.agentconfig import AgentConfig

    for a in AGENCIES:
        folder = fed.root / "agencies" / a
        assert fed.agency_ca[a].read_bytes() == fed.ca_cert.read_bytes()
        assert fed.agency_public[a].read_bytes() == fed.public.read_bytes()
        assert fed.agency_configs[a] == folder / "agency.toml"
        assert _mode(fed.agency_configs[a]) == 0o644  # no secret in it
        text = fed.agency_configs[a].read_text()
        assert text.startswith("# agency.toml")
        assert '"127.0.0.1:50051"' in text  # the first TLS host, port 50051
        # without --data-dir the template points at data/flood.csv in the agency's folder
        assert 'path = "data/flood.csv"' in text
        (folder / "data").mkdir()
        for name in ("flood.csv", "flood_holdout.csv"):
            (folder / "data" / name).write_text("x\n")
        config = AgentConfig.from_toml(fed.agency_configs[a])
        assert config.agency == a
        assert config.token_file == fed.agency_tokens[a]
        assert config.share_file == fed.shares[a]
        assert config.signing_key_file == fed.signing_keys[a]
        assert config.federation_file == fed.agency_public[a]
        assert config.ca_file == fed.agency_ca[a]
        assert config.datasets["flood"].path == folder / "data" / "flood.csv"
        assert set(config.datasets) == {"flood", "flood_holdout"}
        assert set(config.tables) == {"flood"}
        assert config.min_summands == 2
    for s in ("analyst", "auditor"):
        assert fed.scientist_ca[s].read_bytes() == fed.ca_cert.read_bytes()


def test_templates_point_at_the_sample_data(tmp_path):
    from fedcity.data.sample import sample_spec, write_sample_data
    from fedcity.net.agent import Agent
    from fedcity.net.agentconfig import AgentConfig

    names = ["north", "south"]
    written = write_sample_data(tmp_path / "data", names, rows=200, seed=1)
    files = deal_federation(
        tmp_path / "fed",
        names,
        2,
        key_bits=512,
        coordinator="[::1]:6000",
        data_dir=tmp_path / "data",
        tls_hosts=("::1",),
    )
    for a in names:
        config = AgentConfig.from_toml(files.agency_configs[a])
        assert config.coordinator == "[::1]:6000"
        assert config.datasets["flood"].path == written.tables[a].resolve()
        assert config.datasets["flood_holdout"].path == written.holdout[a].resolve()
        assert config.datasets["flood"].spec == sample_spec()
        assert config.tables["flood"].path == written.tables[a].resolve()
        assert "../../../data/" in files.agency_configs[a].read_text()  # relative to the file
        agent = Agent(config)  # the declared columns match the file, the keys fit together
        assert agent.node.datasets["flood"].n_samples == written.rows[a]


def test_key_holder_templates_name_their_key_file(tmp_path):
    from fedcity.net.agentconfig import AgentConfig

    files = deal_federation(tmp_path, ["a", "b"], 1, key_bits=512, key_holder="b")
    for agency, key in (("a", "public-key.json"), ("b", "private-key.json")):
        text = files.agency_configs[agency].read_text()
        assert f'key_file = "{key}"' in text
        folder = files.agency_configs[agency].parent
        (folder / "data").mkdir()
        for name in ("flood.csv", "flood_holdout.csv"):
            (folder / "data" / name).write_text("x\n")
        assert AgentConfig.from_toml(files.agency_configs[agency]).share_file == folder / key


def test_bad_coordinator_address(tmp_path):
    with pytest.raises(CeremonyError, match="host:port"):
        deal_federation(tmp_path, ["a", "b"], 2, key_bits=256, coordinator="nowhere")
    # the agents must dial a name the coordinator's certificate holds
    with pytest.raises(CeremonyError, match=r"'10\.0\.0\.7'.*--tls-hosts"):
        deal_federation(tmp_path, ["a", "b"], 2, key_bits=256, coordinator="10.0.0.7:50051")
    with pytest.raises(CeremonyError, match="would not name"):
        deal_federation(
            tmp_path,
            ["a", "b"],
            2,
            key_bits=256,
            coordinator="a.b.city.example:1",
            tls_hosts=("*.city.example",),
        )
    assert not (tmp_path / "federation-public.json").exists()
    files = deal_federation(
        tmp_path,
        ["a", "b"],
        2,
        key_bits=256,
        coordinator="coord.city.example:443",
        tls_hosts=("*.city.example", "10.0.0.7"),
    )
    assert 'coordinator = "coord.city.example:443"' in files.agency_configs["a"].read_text()
