"""Signed model bundles (runtime/signing.py, `ddrnet keygen` / `ddrnet sign` / `--trust`) and the check
that a loaded model is what deploy.yaml says (runtime/consistency.py).

Every refusal goes through the real command line (`ddrnet predict --model ... --trust ...`): one line,
exit 2, and nothing run (the --out folder, created with the first mask written, never appears)."""
from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import stat
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from ddrnet.cli import main
from ddrnet.runtime import Predictor
from ddrnet.runtime import signing
from ddrnet.runtime.consistency import graph_summary
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.manifest import write_manifest
from runtime_fixtures import make_model_dir, manifest_for, tiny_weights, write_tiny_cityscapes, write_tiny_onnx

SHAPE = (1, 3, 8, 16)


@pytest.fixture(autouse=True)
def trust_env(tmp_path, monkeypatch):
    """Each test gets its own rollback state file and no trust key from the environment."""
    monkeypatch.delenv(signing.TRUST_ENV, raising=False)
    monkeypatch.delenv(signing.PASSPHRASE_ENV, raising=False)
    monkeypatch.setenv(signing.STATE_ENV, str(tmp_path / "state" / "trust-state.json"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    for name in ("fleet", "other"):
        assert main(["keygen", str(folder / name)]) == 0
    return {name: (str(folder / (name + ".key")), str(folder / (name + ".pub"))) for name in ("fleet", "other")}


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory):
    return make_model_dir(str(tmp_path_factory.mktemp("bundle") / "m"), shape=SHAPE)


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("frame") / "street.png")
    cv2.imwrite(path, np.full((8, 16, 3), 90, np.uint8))
    return path


def _copy(src: str, tmp_path, name: str = "bundle") -> str:
    target = str(tmp_path / name)
    shutil.copytree(src, target)
    return target


def _sign(model_dir: str, key_path: str, version=None, expires=None, now=None) -> dict:
    return signing.sign_bundle(model_dir, signing.load_private_key(key_path), version, expires, now)


def _signed(unsigned, keys, tmp_path, name="bundle", version=1) -> str:
    model_dir = _copy(unsigned, tmp_path, name)
    _sign(model_dir, keys["fleet"][0], version)
    return model_dir


def _predict(model_dir, frame, tmp_path, capsys, *extra):
    """Run `ddrnet predict`; (exit code, stderr lines, masks written)."""
    out = str(tmp_path / "pred")
    rc = main(["predict", "--model", model_dir, "--input", frame, "--out", out] + list(extra))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    written = sorted(os.listdir(out)) if os.path.isdir(out) else []
    return rc, err, written


def _refused(model_dir, frame, tmp_path, capsys, trust, pattern):
    rc, err, written = _predict(model_dir, frame, tmp_path, capsys, "--trust", trust)
    assert rc == 2 and written == []
    assert len(err) == 1 and err[0].startswith("ddrnet predict: error: "), err
    assert re.search(pattern, err[0]), err[0]
    return err[0]


def _flip_last_byte(path: str) -> None:
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0xFF
    open(path, "wb").write(bytes(data))


# -- every refusal of a signed bundle ---------------------------------------------------------------

def test_valid_signed_bundle_runs_and_is_recorded(unsigned, keys, frame, tmp_path, capsys):
    model_dir = _signed(unsigned, keys, tmp_path, version=7)
    rc, err, written = _predict(model_dir, frame, tmp_path, capsys, "--trust", keys["fleet"][1])
    assert rc == 0 and written == ["street.png"]
    state = json.load(open(signing.default_state_path()))
    keyid = signing.load_public_key(keys["fleet"][1])[1]
    assert state["accepted"][keyid]["tiny"]["version"] == 7


def test_changed_byte_is_refused(unsigned, keys, frame, tmp_path, capsys):
    model_dir = _signed(unsigned, keys, tmp_path)
    _flip_last_byte(os.path.join(model_dir, "model.onnx"))
    _refused(model_dir, frame, tmp_path, capsys, keys["fleet"][1], r"model\.onnx: SHA-256 mismatch with deploy\.yaml")


def test_swapped_file_with_recomputed_hash_is_refused(unsigned, keys, frame, tmp_path, capsys):
    model_dir = _signed(unsigned, keys, tmp_path)
    write_tiny_onnx(os.path.join(model_dir, "model.onnx"), SHAPE, seed=1)  # same interface, other weights
    write_manifest(model_dir, manifest_for(list(SHAPE)))  # deploy.yaml with the new hash
    _refused(model_dir, frame, tmp_path, capsys, keys["fleet"][1],
             r"deploy\.yaml: does not match the bundle's signature \(changed after signing\)")


def test_swapped_deploy_yaml_is_refused(unsigned, keys, frame, tmp_path, capsys):
    model_dir = _signed(unsigned, keys, tmp_path)
    other = _signed(unsigned, keys, tmp_path, "other")
    manifest = yaml.safe_load(open(os.path.join(other, "deploy.yaml")))
    manifest["input"]["mean"] = [0.4, 0.4, 0.4]  # a valid deploy.yaml that describes the files differently
    open(os.path.join(model_dir, "deploy.yaml"), "w").write(yaml.safe_dump(manifest))
    _refused(model_dir, frame, tmp_path, capsys, keys["fleet"][1],
             r"deploy\.yaml: does not match the bundle's signature")


def test_wrong_key_is_refused(unsigned, keys, frame, tmp_path, capsys):
    model_dir = _copy(unsigned, tmp_path)
    _sign(model_dir, keys["other"][0])
    _refused(model_dir, frame, tmp_path, capsys, keys["fleet"][1],
             r"signature\.json: signed by key [0-9a-f]{16}, not by the trusted key [0-9a-f]{16}$")


def test_unsigned_bundle_with_a_trust_key_is_refused_before_any_hashing(unsigned, keys, frame, tmp_path, capsys):
    model_dir = _copy(unsigned, tmp_path)
    _flip_last_byte(os.path.join(model_dir, "model.onnx"))  # the signature is checked first
    _refused(model_dir, frame, tmp_path, capsys, keys["fleet"][1],
             r"signature\.json: missing: the bundle is unsigned and a trust key is set")


@pytest.mark.parametrize("command", ["bench", "eval", "stream", "predict"])
def test_every_runtime_command_takes_trust(unsigned, keys, frame, tmp_path, capsys, command):
    """--trust reaches the Predictor of each runtime command: an unsigned bundle is refused, a signed one runs."""
    data = str(tmp_path / "data")
    write_tiny_cityscapes(data, hw=(8, 16))
    out = str(tmp_path / "out")
    args = {"bench": ["--iters", "1", "--warmup", "0", "--json", os.path.join(out, "r.json")],
            "eval": ["--data-root", data, "--json", os.path.join(out, "r.json")],
            "stream": ["--source", frame, "--masks", out], "predict": ["--input", frame, "--out", out]}[command]
    for model_dir, rc in [(unsigned, 2), (_signed(unsigned, keys, tmp_path), 0)]:
        assert main([command, "--model", model_dir, "--trust", keys["fleet"][1]] + args) == rc
        err = capsys.readouterr().err
        assert ("the bundle is unsigned" in err) == (rc == 2)
        assert bool(os.path.isdir(out) and os.listdir(out)) == (rc == 0)  # only the signed run wrote results


def test_trust_key_from_the_environment(unsigned, keys, frame, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(signing.TRUST_ENV, keys["fleet"][1])
    with pytest.raises(DDRNetError, match="the bundle is unsigned"):
        Predictor(unsigned)
    assert Predictor(_signed(unsigned, keys, tmp_path))(np.zeros((8, 16, 3), np.uint8)).shape == (8, 16)


def test_rollback_to_an_older_signed_version_is_refused(unsigned, keys, frame, tmp_path, capsys):
    newer = _signed(unsigned, keys, tmp_path, "v2", version=2)
    older = _signed(unsigned, keys, tmp_path, "v1", version=1)
    assert _predict(older, frame, tmp_path, capsys, "--trust", keys["fleet"][1])[0] == 0  # v1 first: fine
    shutil.rmtree(str(tmp_path / "pred"))
    assert _predict(newer, frame, tmp_path, capsys, "--trust", keys["fleet"][1])[0] == 0
    shutil.rmtree(str(tmp_path / "pred"))
    _refused(older, frame, tmp_path, capsys, keys["fleet"][1],
             r"version 1 of tiny is older than version 2 already accepted on this device \(rollback refused")
    # the newest keeps running, and the state file was written once per new version
    assert _predict(newer, frame, tmp_path, capsys, "--trust", keys["fleet"][1])[0] == 0


def test_same_version_with_other_content_is_refused(unsigned, keys, frame, tmp_path, capsys):
    first = _signed(unsigned, keys, tmp_path, "a", version=3)
    Predictor(first, trust=keys["fleet"][1])
    second = _copy(unsigned, tmp_path, "b")
    write_manifest(second, dict(manifest_for(list(SHAPE)), created="another export"))
    _sign(second, keys["fleet"][0], version=3)
    _refused(second, frame, tmp_path, capsys, keys["fleet"][1],
             r"version 3 of tiny was already accepted with other content")


def test_resigning_the_same_content_and_version_extends_the_expiry(unsigned, keys, tmp_path):
    model_dir = _signed(unsigned, keys, tmp_path, version=3)
    Predictor(model_dir, trust=keys["fleet"][1])
    later = signing.utc_now() + datetime.timedelta(days=900)
    assert _sign(model_dir, keys["fleet"][0], version=3, expires=later)["expires"] == signing.format_time(later)
    Predictor(model_dir, trust=keys["fleet"][1])


def test_unwritable_state_is_refused(unsigned, keys, frame, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(signing.STATE_ENV, "/proc/ddrnet/trust-state.json")  # not even root can write there
    _refused(_signed(unsigned, keys, tmp_path), frame, tmp_path, capsys, keys["fleet"][1],
             r"/proc/ddrnet/trust-state\.json: cannot record the accepted version \(.*\); set DDRNET_TRUST_STATE")


def test_a_signature_close_to_expiry_runs_with_a_warning(unsigned, keys, frame, tmp_path):
    model_dir = _copy(unsigned, tmp_path)
    _sign(model_dir, keys["fleet"][0], version=1, expires=signing.utc_now() + datetime.timedelta(days=10, hours=1))
    # a real process: the CLI's log handler writes to the stderr it found first, not to capsys'
    proc = subprocess.run([sys.executable, "-m", "ddrnet", "predict", "--model", model_dir, "--input", frame,
                           "--out", str(tmp_path / "pred"), "--trust", keys["fleet"][1]],
                          capture_output=True, text=True, timeout=120)
    err = proc.stderr.splitlines()
    assert proc.returncode == 0 and os.listdir(str(tmp_path / "pred")) == ["street.png"]
    assert any(re.match(r"signed bundle tiny version 1 verified \(key [0-9a-f]{16}, expires ", line) for line in err)
    assert any(re.match(r"warning: the signature of tiny version 1 expires in 10 day\(s\)", line) for line in err)


def test_expired_signature_is_refused(unsigned, keys, frame, tmp_path, capsys):
    model_dir = _copy(unsigned, tmp_path)
    then = signing.utc_now() - datetime.timedelta(days=400)
    _sign(model_dir, keys["fleet"][0], version=1, expires=then + datetime.timedelta(days=365), now=then)
    _refused(model_dir, frame, tmp_path, capsys, keys["fleet"][1],
             r"signature\.json: signature expired at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(the fleet must re-sign")


@pytest.mark.parametrize("tamper, pattern", [
    (lambda doc: doc["signed"].update(version=doc["signed"]["version"] + 1), r"bad signature"),
    (lambda doc: doc["signed"].update(expires="2099-01-01T00:00:00Z"), r"bad signature"),
    (lambda doc: doc.update(sig=doc["sig"][:10] + ("A" if doc["sig"][10] != "A" else "B") + doc["sig"][11:]),
     r"bad signature"),
    (lambda doc: doc.update(sig="not base64!"), r"not a valid signature file"),
    (lambda doc: doc.pop("signed"), r"not a valid signature file"),
])
def test_tampered_signature_file_is_refused(unsigned, keys, frame, tmp_path, capsys, tamper, pattern):
    model_dir = _signed(unsigned, keys, tmp_path)
    path = os.path.join(model_dir, signing.SIGNATURE_NAME)
    document = json.load(open(path))
    tamper(document)
    open(path, "w").write(json.dumps(document))
    _refused(model_dir, frame, tmp_path, capsys, keys["fleet"][1], r"signature\.json: " + pattern)


def test_validly_signed_content_of_another_kind_is_refused(unsigned, keys, frame, tmp_path, capsys):
    """E.g. another tool's document signed with the same key: the signature is good, the payload is not ours."""
    model_dir = _signed(unsigned, keys, tmp_path)
    path = os.path.join(model_dir, signing.SIGNATURE_NAME)
    document = json.load(open(path))
    document["signed"]["type"] = "firmware"
    key = signing.load_private_key(keys["fleet"][0])
    document["sig"] = base64.b64encode(key.sign(signing.canonical(document["signed"]))).decode()
    open(path, "w").write(json.dumps(document))
    _refused(model_dir, frame, tmp_path, capsys, keys["fleet"][1],
             r"signature\.json: signed content is not a ddrnet-bundle payload")


def test_signature_survives_reformatting(unsigned, keys, tmp_path):
    model_dir = _signed(unsigned, keys, tmp_path)
    path = os.path.join(model_dir, signing.SIGNATURE_NAME)
    document = json.load(open(path))
    open(path, "w").write(json.dumps(document, indent=8))
    Predictor(model_dir, trust=keys["fleet"][1])


def test_corrupt_state_file_is_refused_not_reset(unsigned, keys, frame, tmp_path, capsys):
    model_dir = _signed(unsigned, keys, tmp_path)
    state = signing.default_state_path()
    os.makedirs(os.path.dirname(state))
    open(state, "w").write("{not json")
    _refused(model_dir, frame, tmp_path, capsys, keys["fleet"][1], r"trust-state\.json: unreadable trust state")
    assert open(state).read() == "{not json"


def _rsa_public_key(path: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    open(path, "wb").write(pem)
    return path


@pytest.mark.parametrize("which, pattern", [("missing", r"cannot read \(No such file"),
                                            ("private", r"not a PEM public key"),
                                            ("rsa", r"not an Ed25519 public key")])
def test_bad_trust_key_is_refused_before_any_work(unsigned, keys, frame, tmp_path, capsys, which, pattern):
    trust = {"missing": lambda: str(tmp_path / "nosuch.pub"), "private": lambda: keys["fleet"][0],
             "rsa": lambda: _rsa_public_key(str(tmp_path / "rsa.pub"))}[which]()
    line = _refused(unsigned, frame, tmp_path, capsys, trust, r"--trust .*: " + pattern)
    assert trust in line


def test_without_a_trust_key_the_runtime_warns_once(unsigned, tmp_path):
    script = ("from ddrnet.runtime import Predictor\n"
              "import sys\n"
              "Predictor(sys.argv[1]); Predictor(sys.argv[1])\n"
              "Predictor(sys.argv[1], trust=False)\n")
    env = dict(os.environ)
    env.pop(signing.TRUST_ENV, None)
    proc = subprocess.run([sys.executable, "-c", script, unsigned], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "not authenticated" in line]
    assert len(warnings) == 1 and signing.TRUST_ENV in warnings[0]
    proc = subprocess.run([sys.executable, "-c", "from ddrnet.runtime import Predictor\nimport sys\n"
                           "Predictor(sys.argv[1], trust=False)", unsigned],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "not authenticated" not in proc.stderr


@pytest.fixture
def verifier(request, monkeypatch):
    """verify_ed25519 through OpenSSL's libcrypto, or (no library names to try) through cryptography."""
    if request.param == "cryptography":
        monkeypatch.setattr(signing, "_LIBCRYPTO_NAMES", ())
    signing._libcrypto.cache_clear()
    yield request.param
    signing._libcrypto.cache_clear()


@pytest.mark.parametrize("verifier", ["openssl", "cryptography"], indirect=True)
def test_both_verifiers_accept_only_the_exact_signature(verifier):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    assert (signing._libcrypto() is None) == (verifier == "cryptography")  # Debian and Jetson ship libcrypto
    key, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    message = b'{"signed": "deploy.yaml"}'
    sig = key.sign(message)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    cases = {"valid": (sig, message, True), "empty message": (key.sign(b""), b"", True),
             "signature bit": (flipped, message, False), "message bit": (sig, message[:-1] + b"]", False),
             "other key": (other.sign(message), message, False), "short": (sig[:63], message, False),
             "long": (sig + b"\0", message, False), "empty signature": (b"", message, False)}
    for case, (signature, text, expected) in cases.items():
        assert signing.verify_ed25519(raw, signature, text) is expected, case
    if verifier == "openssl":  # a refusal leaves nothing in OpenSSL's error queue for hashlib to trip on
        import ctypes
        assert ctypes.CDLL(signing._libcrypto()._name).ERR_peek_error() == 0


def test_verification_needs_only_one_of_openssl_and_cryptography(unsigned, keys, tmp_path):
    """Without the cryptography package a signed bundle still verifies (OpenSSL); with neither, unsigned
    bundles run and a trust key is a one-line error."""
    signed = _signed(unsigned, keys, tmp_path)
    script = ("import sys\n"
              "sys.modules['cryptography'] = None  # import cryptography now raises ImportError\n"
              "from ddrnet.runtime import Predictor, signing\n"
              "from ddrnet.runtime.errors import DDRNetError\n"
              "Predictor(sys.argv[1], trust=sys.argv[2])\n"
              "print('verified')\n"
              "signing._LIBCRYPTO_NAMES = ()\n"
              "signing._libcrypto.cache_clear()\n"
              "Predictor(sys.argv[3])\n"
              "try:\n"
              "    Predictor(sys.argv[1], trust=sys.argv[2])\n"
              "except DDRNetError as err:\n"
              "    print(err)\n")
    proc = subprocess.run([sys.executable, "-c", script, signed, keys["fleet"][1], unsigned], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["verified",
                                        "signed bundles need the cryptography package (pip install cryptography)"]


# -- keygen and sign -----------------------------------------------------------------------------

def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path, capsys):
    assert main(["keygen", str(tmp_path / "k.key")]) == 0  # the suffix is not doubled
    out = capsys.readouterr().out
    private, public = str(tmp_path / "k.key"), str(tmp_path / "k.pub")
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    keyid = signing.load_public_key(public)[1]
    assert keyid in out and signing.private_key_id(signing.load_private_key(private)) == keyid
    before = open(private, "rb").read()
    assert main(["keygen", str(tmp_path / "k")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "k.key: exists; keygen never overwrites a key (choose another name)")
    assert open(private, "rb").read() == before


def test_encrypted_private_key(unsigned, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(signing.PASSPHRASE_ENV, "correct horse")
    assert main(["keygen", str(tmp_path / "enc")]) == 0
    assert b"ENCRYPTED" in open(str(tmp_path / "enc.key"), "rb").read()
    model_dir = _copy(unsigned, tmp_path)
    assert main(["sign", "--model", model_dir, "--key", str(tmp_path / "enc.key")]) == 0
    monkeypatch.setenv(signing.PASSPHRASE_ENV, "wrong")
    assert main(["sign", "--model", model_dir, "--key", str(tmp_path / "enc.key")]) == 2
    monkeypatch.delenv(signing.PASSPHRASE_ENV)
    assert main(["sign", "--model", model_dir, "--key", str(tmp_path / "enc.key")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "wrong DDRNET_KEY_PASSPHRASE" in err[-2] and "encrypted (set or unset DDRNET_KEY_PASSPHRASE)" in err[-1]


def test_sign_refuses_a_bundle_whose_files_do_not_match(unsigned, keys, tmp_path, capsys):
    model_dir = _copy(unsigned, tmp_path)
    _flip_last_byte(os.path.join(model_dir, "model.onnx"))
    assert main(["sign", "--model", model_dir, "--key", keys["fleet"][0]]) == 2
    assert "model.onnx: SHA-256 mismatch" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(model_dir, signing.SIGNATURE_NAME))


@pytest.mark.parametrize("args, pattern", [
    (["--version", "0"], r"--version 0: must be a positive integer"),
    (["--expires", "2001-01-01"], r"--expires 2001-01-01: already past"),
    (["--expires", "soon"], r"--expires 'soon': expected days"),
    (["--version", "4"], r"version 4 is older than the bundle's current signature \(5\)"),
])
def test_sign_option_errors(unsigned, keys, tmp_path, capsys, args, pattern):
    model_dir = _copy(unsigned, tmp_path)
    _sign(model_dir, keys["fleet"][0], version=5)
    before = open(os.path.join(model_dir, signing.SIGNATURE_NAME)).read()
    assert main(["sign", "--model", model_dir, "--key", keys["fleet"][0]] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(pattern, err[0]), err
    assert open(os.path.join(model_dir, signing.SIGNATURE_NAME)).read() == before


def test_sign_defaults_and_expiry_forms(unsigned, keys, tmp_path, capsys):
    model_dir = _copy(unsigned, tmp_path)
    now = datetime.datetime(2026, 11, 30, 12, 0, 5, tzinfo=datetime.timezone.utc)
    signed = _sign(model_dir, keys["fleet"][0], now=now)
    assert signed["version"] == 20261130120005 and signed["expires"] == "2027-11-30T12:00:05Z"
    assert signing.parse_expiry("90d", now) == now + datetime.timedelta(days=90)
    assert signing.format_time(signing.parse_expiry("2027-06-30", now)) == "2027-06-30T00:00:00Z"
    assert signing.format_time(signing.parse_expiry("2027-06-30T08:30:00Z", now)) == "2027-06-30T08:30:00Z"
    assert main(["sign", "--model", model_dir, "--key", keys["fleet"][0], "--version", "20991231000000",
                 "--expires", "30d"]) == 0
    assert "tiny version 20991231000000" in capsys.readouterr().out


# -- consistency: a swapped model is refused even without signatures -------------------------------

def _write_onnx(path: str, quantized: bool = False, lowres: bool = False, metadata=None,
                logits: str = "logits") -> None:
    """The tiny 1x1-conv model of runtime_fixtures, optionally with Q/DQ on its input (INT8) or
    ending in 2x2-pooled scores instead of the argmax (lowres_logits); `logits` names the conv output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = tiny_weights()
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    nodes, x = [], "x"
    if quantized:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
                  numpy_helper.from_array(np.array(128, np.uint8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
        x = "xd"
    nodes.append(helper.make_node("Conv", [x, "w", "b"], [logits]))
    if lowres:
        nodes.append(helper.make_node("AveragePool", [logits], ["out"], kernel_shape=[2, 2], strides=[2, 2]))
        output = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 19, SHAPE[2] // 2, SHAPE[3] // 2])
    else:
        nodes += [helper.make_node("ArgMax", [logits], ["idx"], axis=1, keepdims=0),
                  helper.make_node("Cast", ["idx"], ["out"], to=TensorProto.INT32)]
        output = helper.make_tensor_value_info("out", TensorProto.INT32, [1, SHAPE[2], SHAPE[3]])
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                              [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)


def _bundle(tmp_path, name: str, precision: str, output: str, **onnx_kw) -> str:
    model_dir = str(tmp_path / name)
    os.makedirs(model_dir)
    _write_onnx(os.path.join(model_dir, "model.onnx"), **onnx_kw)
    write_manifest(model_dir, manifest_for(list(SHAPE), output=output, precision=precision))
    return model_dir


def test_the_issue_swap_int8_argmax_replaced_by_fp32_lowres_is_refused(tmp_path, capsys):
    """deploy.yaml says int8 + argmax; model.onnx is an FP32 lowres_logits model, its hash updated."""
    model_dir = _bundle(tmp_path, "int8", "int8", "argmax", quantized=True)
    Predictor(model_dir)  # the genuine bundle loads
    _write_onnx(os.path.join(model_dir, "model.onnx"), lowres=True)
    write_manifest(model_dir, manifest_for(list(SHAPE), output="argmax", precision="int8"))
    assert main(["bench", "--model", model_dir, "--iters", "1", "--warmup", "0"]) == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert captured.out == "" and len(err) == 1
    assert err[0] == ("ddrnet bench: error: {}: does not match deploy.yaml (swapped model?): output float32 "
                      "[1, 19, 4, 8] where output op argmax gives an integer class map [N, H, W]; the graph has "
                      "no quantization operators where deploy.yaml says precision int8".format(
                          os.path.join(model_dir, "model.onnx")))


@pytest.mark.parametrize("precision, output, onnx_kw, problem", [
    ("fp32", "argmax", dict(quantized=True),
     "the graph has quantization operators where deploy.yaml says precision fp32"),
    ("fp32", "lowres_logits", dict(), r"output int32 \[1, 8, 16\] where output op lowres_logits gives float scores"),
    ("fp32", "softmax", dict(lowres=True), r"output float32 \[1, 19, 4, 8\] where output op softmax is the input size"),
    ("fp32", "argmax", dict(metadata={"model_name": "ddrnet39", "precision": "fp32", "output_op": "argmax"}),
     "its metadata says model_name ddrnet39 where deploy.yaml says tiny"),
    ("int8", "argmax", dict(quantized=True, metadata={"precision": "fp32"}),
     "its metadata says precision fp32 where deploy.yaml says int8"),
])
def test_model_that_does_not_match_deploy_yaml_is_refused(tmp_path, precision, output, onnx_kw, problem):
    model_dir = _bundle(tmp_path, "m", precision, output, **onnx_kw)
    with pytest.raises(DDRNetError, match=r"model\.onnx: does not match deploy\.yaml \(swapped model\?\): " + problem):
        Predictor(model_dir)


@pytest.mark.parametrize("precision, output, onnx_kw", [
    ("int8", "argmax", dict(quantized=True, metadata={"model_name": "tiny", "precision": "int8"})),
    ("fp32", "lowres_logits", dict(lowres=True)),
])
def test_consistent_models_load(tmp_path, precision, output, onnx_kw):
    mask = Predictor(_bundle(tmp_path, "m", precision, output, **onnx_kw))(np.zeros((8, 16, 3), np.uint8))
    assert mask.shape == (8, 16)


def test_graph_summary_reads_op_types_and_metadata_not_names(tmp_path):
    path = str(tmp_path / "m.onnx")
    _write_onnx(path, quantized=True, metadata={"precision": "int8"})
    assert graph_summary(path) == (True, {"precision": "int8"})
    _write_onnx(path, metadata={"note": "QuantizeLinear"})  # the word alone is no quantized node
    assert graph_summary(path) == (False, {"note": "QuantizeLinear"})
    # nor a tensor name that, with its length byte (34 = the op_type tag), looks like an op_type field
    name = "aQuantizeLinear".ljust(0x22, "x")
    _write_onnx(path, logits=name)
    assert name.encode() in open(path, "rb").read() and graph_summary(path) == (False, {})
    open(path, "wb").write(b"\x3a\xff\xff\xff\x0f")  # a graph field longer than the file
    with pytest.raises(DDRNetError, match=r"m\.onnx: not a readable model graph"):
        graph_summary(path)


def test_the_startup_benchmark_runs(tmp_path):
    """benchmarks/trust_startup.py end to end on a tiny model (its figures are for an idle host, not checked)."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                          "trust_startup.py")
    out = str(tmp_path / "trust.json")
    proc = subprocess.run([sys.executable, script, "--width", "8", "--repeat", "2", "--fresh", "1", "--json", out],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.load(open(out))
    for name in ("hash", "verify", "consistency", "record", "verify_first_in_process_cpu"):
        assert result[name]["p50_ms"] > 0
