"""Signed model bundles: a car runs only what the fleet's key signed.

deploy.yaml lists the SHA-256 of every file of a model dir, but whoever can write the dir can
rewrite deploy.yaml too: hashes give integrity, not authenticity. `ddrnet sign` adds
`signature.json`, an Ed25519 signature (made with the `cryptography` package; checked through
OpenSSL's libcrypto where the process finds it, else through cryptography) over deploy.yaml's
SHA-256, a bundle version and an expiry date. Given the fleet's public key (`--trust KEY.pub`,
DDRNET_TRUST, `Predictor(trust=...)`), the runtime refuses an unsigned bundle, a signature by
another key or over other content, an expired signature, and a version older than the newest this
device has accepted (rollback), remembered per key and model name in a small state file. This is the
targets metadata of The Update Framework / Uptane, reduced to one key and one bundle.

signature.json:

    {"signed": {"type": "ddrnet-bundle", "model_name": "ddrnet23_slim", "version": 20261130120000,
                "manifest_sha256": "<SHA-256 of deploy.yaml>", "signed_at": "2026-11-30T12:00:00Z",
                "expires": "2027-11-30T12:00:00Z"},
     "keyid": "<SHA-256 of the raw public key>", "sig": "<base64 Ed25519 signature>"}

The signature covers the canonical JSON of "signed" (sorted keys, no spaces, ASCII): the file stays
readable, and what is checked is exactly the object the runtime then uses.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import functools
import hashlib
import json
import logging
import os
import re
from typing import Iterator, NamedTuple, Optional, Tuple, Union

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.fileio import atomic_write, check_output_file, write_bytes, write_json
from ddrnet.runtime.manifest import MANIFEST_NAME, load_manifest, read_manifest_bytes

log = logging.getLogger(__name__)

SIGNATURE_NAME = "signature.json"
PAYLOAD_TYPE = "ddrnet-bundle"
TRUST_ENV = "DDRNET_TRUST"
STATE_ENV = "DDRNET_TRUST_STATE"
PASSPHRASE_ENV = "DDRNET_KEY_PASSPHRASE"
STATE_FORMAT = 1
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
DEFAULT_EXPIRY = "365d"
EXPIRY_WARNING = datetime.timedelta(days=30)  # a running bundle this close to expiry is warned about
_SHA256 = re.compile(r"[0-9a-f]{64}")

Trust = Union[str, bool, None]


def _ed25519():
    """(ed25519 module, InvalidSignature) of cryptography, for keys and signing (and verifying where
    OpenSSL's libcrypto is not found). Its serialization package is left to the signing side: its imports
    (SSH, RSA, EC, ciphers) took ~12 ms."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise DDRNetError("signed bundles need the cryptography package (pip install cryptography)") from None
    return ed25519, InvalidSignature


# OpenSSL 1.1.1 or later (raw Ed25519 keys, one-shot EVP_DigestVerify): the library Python's own hashlib and ssl
# load, so binding it costs well under a millisecond where importing cryptography's 14 MB native module costs
# ~10 ms at every process start (benchmarks/trust_startup.py).
_LIBCRYPTO_NAMES = ("libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.3.dylib", "libcrypto.1.1.dylib")
_NID_ED25519 = 1087  # OpenSSL's EVP_PKEY_ED25519


@functools.lru_cache(maxsize=None)
def _libcrypto():
    """OpenSSL's libcrypto with the Ed25519 verification calls typed, or None (then cryptography verifies)."""
    import ctypes

    ptr, size = ctypes.c_void_p, ctypes.c_size_t
    signatures = {  # name: (restype, argtypes)
        "EVP_PKEY_new_raw_public_key": (ptr, [ctypes.c_int, ptr, ctypes.c_char_p, size]),
        "EVP_PKEY_free": (None, [ptr]),
        "EVP_MD_CTX_new": (ptr, []),
        "EVP_MD_CTX_free": (None, [ptr]),
        "EVP_DigestVerifyInit": (ctypes.c_int, [ptr, ptr, ptr, ptr, ptr]),
        "EVP_DigestVerify": (ctypes.c_int, [ptr, ctypes.c_char_p, size, ctypes.c_char_p, size]),
        "ERR_clear_error": (None, []),
    }
    for name in _LIBCRYPTO_NAMES:
        try:
            lib = ctypes.CDLL(name)
            for function, (restype, argtypes) in signatures.items():
                getattr(lib, function).restype, getattr(lib, function).argtypes = restype, argtypes
        except (OSError, AttributeError):  # not there, or older than 1.1.1
            continue
        return lib
    return None


def verify_ed25519(raw_public: bytes, sig: bytes, message: bytes) -> bool:
    """Whether `sig` is the Ed25519 signature of `message` by the 32-byte public key `raw_public` (RFC 8032),
    through OpenSSL when the process can bind it, else through cryptography."""
    lib = _libcrypto()
    if lib is None:
        ed25519, invalid_signature = _ed25519()
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(raw_public).verify(sig, message)
        except invalid_signature:
            return False
        return True
    pkey, ctx = lib.EVP_PKEY_new_raw_public_key(_NID_ED25519, None, raw_public, len(raw_public)), None
    try:
        ctx = lib.EVP_MD_CTX_new()
        if not pkey or not ctx or lib.EVP_DigestVerifyInit(ctx, None, None, None, pkey) != 1:
            raise DDRNetError("OpenSSL could not set up Ed25519 verification")
        return lib.EVP_DigestVerify(ctx, sig, len(sig), message, len(message)) == 1
    finally:
        lib.EVP_MD_CTX_free(ctx)
        lib.EVP_PKEY_free(pkey)
        lib.ERR_clear_error()  # a failed check leaves errors queued, which hashlib and ssl would otherwise report


def _serialization():
    _ed25519()  # the same one-line error when cryptography is missing
    from cryptography.hazmat.primitives import serialization

    return serialization


# -- keys ----------------------------------------------------------------------------------------

# RFC 8410: an Ed25519 SubjectPublicKeyInfo (a .pub file's DER) is this prefix and the 32 key bytes
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----([A-Za-z0-9+/=\s]*)-----END PUBLIC KEY-----")


def key_paths(out: str) -> Tuple[str, str]:
    """OUT -> (OUT.key, OUT.pub); a trailing .key or .pub in OUT is not doubled."""
    stem, ext = os.path.splitext(out)
    base = stem if ext in (".key", ".pub") else out
    return base + ".key", base + ".pub"


def key_id(raw_public: bytes) -> str:
    """A key's id: the SHA-256 of its raw 32-byte public key."""
    return hashlib.sha256(raw_public).hexdigest()


def private_key_id(key) -> str:
    serialization = _serialization()
    return key_id(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _passphrase() -> Optional[bytes]:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value else None


def generate_keypair(out: str) -> str:
    """Write OUT.key (PKCS#8 PEM, mode 0600; encrypted when DDRNET_KEY_PASSPHRASE is set) and
    OUT.pub (SubjectPublicKeyInfo PEM). Never overwrites a key. Returns the key id."""
    ed25519, _ = _ed25519()
    serialization = _serialization()
    private_path, public_path = key_paths(out)
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise DDRNetError("{}: exists; keygen never overwrites a key (choose another name)".format(path))
        check_output_file(path, "OUT")
    key = ed25519.Ed25519PrivateKey.generate()
    secret = _passphrase()
    encryption = (serialization.BestAvailableEncryption(secret) if secret
                  else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    with atomic_write(private_path, "wb", private=True) as f:  # mode 0600 from its creation
        f.write(pem)
    write_bytes(public_path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_key_id(key)


def _read_key_file(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise DDRNetError("{} {}: cannot read ({})".format(option, path, err.strerror or err)) from None


def load_private_key(path: str, option: str = "--key"):
    ed25519, _ = _ed25519()
    serialization = _serialization()
    data = _read_key_file(path, option)
    try:
        key = serialization.load_pem_private_key(data, password=_passphrase())
    except TypeError:  # encrypted without a passphrase, or a passphrase for a plain key
        raise DDRNetError("{} {}: {} (set or unset {})".format(
            option, path, "encrypted" if b"ENCRYPTED" in data else "not encrypted", PASSPHRASE_ENV)) from None
    except ValueError:
        raise DDRNetError("{} {}: not a PEM private key, or a wrong {}".format(option, path, PASSPHRASE_ENV)) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DDRNetError("{} {}: not an Ed25519 key (make one with ddrnet keygen)".format(option, path))
    return key


def load_public_key(path: str, option: str = "--trust") -> Tuple[bytes, str]:
    """(raw 32-byte Ed25519 public key, key id) of a .pub file (PEM, as ddrnet keygen or `openssl pkey -pubout`
    write it)."""
    data = _read_key_file(path, option)
    match = _PEM_PUBLIC.search(data)
    der = b""
    if match:
        with contextlib.suppress(binascii.Error):
            der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
    if not der:
        raise DDRNetError("{} {}: not a PEM public key (the .pub of ddrnet keygen)".format(option, path))
    if len(der) != len(ED25519_SPKI_PREFIX) + 32 or not der.startswith(ED25519_SPKI_PREFIX):
        raise DDRNetError("{} {}: not an Ed25519 public key (the .pub of ddrnet keygen)".format(option, path))
    raw = der[len(ED25519_SPKI_PREFIX):]
    return raw, key_id(raw)


# -- time ----------------------------------------------------------------------------------------

def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime(TIME_FORMAT)


# YYYY-MM-DD[THH:MM:SSZ], parsed by hand: datetime.strptime's first call imports _strptime and
# locale (~10 ms of a car's start-up)
_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?:T(\d\d):(\d\d):(\d\d)Z)?")


def parse_time(text: str, date_only_ok: bool = False) -> datetime.datetime:
    """A time as format_time writes it, or with `date_only_ok` a date (00:00 UTC); ValueError otherwise."""
    match = _TIME.fullmatch(text.strip())
    if match is None or (match.group(4) is None and not date_only_ok):
        raise ValueError("not a UTC time like 2027-06-30T12:00:00Z: {!r}".format(text))
    return datetime.datetime(*(int(g) for g in match.groups() if g is not None), tzinfo=datetime.timezone.utc)


def parse_expiry(text: str, now: datetime.datetime, option: str = "--expires") -> datetime.datetime:
    """'90d' (days from now), '2027-06-30' (that day, 00:00 UTC) or '2027-06-30T12:00:00Z'."""
    days = re.fullmatch(r"\s*(\d+)\s*d\s*", text or "")
    try:
        expires = now + datetime.timedelta(days=int(days.group(1))) if days else parse_time(text, True)
    except (ValueError, OverflowError):
        raise DDRNetError("{} {!r}: expected days (e.g. 365d) or a UTC date (2027-06-30 or "
                          "2027-06-30T12:00:00Z)".format(option, text)) from None
    if expires <= now:
        raise DDRNetError("{} {}: already past ({} now)".format(option, text, format_time(now)))
    return expires


# -- signing -------------------------------------------------------------------------------------

def signature_path(model_dir: str) -> str:
    return os.path.join(model_dir, SIGNATURE_NAME)


def canonical(signed: dict) -> bytes:
    return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def default_version(now: datetime.datetime) -> int:
    """The signing time as a number, YYYYMMDDhhmmss: it only goes up, with no counter to keep."""
    return int(now.strftime("%Y%m%d%H%M%S"))


def _previous_version(model_dir: str) -> Optional[int]:
    """The version of the bundle's current signature, if it has a readable one."""
    try:
        with open(signature_path(model_dir), "r", encoding="utf-8") as f:
            version = json.load(f)["signed"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, int) else None


def sign_bundle(model_dir: str, key, version: Optional[int] = None,
                expires: Optional[datetime.datetime] = None,
                now: Optional[datetime.datetime] = None) -> dict:
    """Verify the bundle against its deploy.yaml, then write signature.json with `key` (an Ed25519
    private key). Returns the signed payload."""
    now = now or utc_now()
    data = read_manifest_bytes(model_dir)
    manifest = load_manifest(model_dir, data=data)  # never sign files that do not match deploy.yaml
    version = default_version(now) if version is None else version
    previous = _previous_version(model_dir)
    if previous is not None and version < previous:
        raise DDRNetError("{}: version {} is older than the bundle's current signature ({}); versions only "
                          "go up, or cars refuse the bundle as a rollback".format(model_dir, version, previous))
    signed = {"type": PAYLOAD_TYPE, "model_name": manifest["model_name"], "version": version,
              "manifest_sha256": hashlib.sha256(data).hexdigest(), "signed_at": format_time(now),
              "expires": format_time(expires or parse_expiry(DEFAULT_EXPIRY, now))}
    document = {"signed": signed, "keyid": private_key_id(key),
                "sig": base64.b64encode(key.sign(canonical(signed))).decode("ascii")}
    write_json(document, signature_path(model_dir))
    return signed


# -- verification --------------------------------------------------------------------------------

class Accepted(NamedTuple):
    """A bundle that passed verification; record() makes its version the newest this device ran."""
    state_path: str
    keyid: str
    model_name: str
    version: int
    manifest_sha256: str
    expires: str

    def record(self) -> None:
        with _locked(self.state_path):
            state = read_state(self.state_path)
            models = state["accepted"].setdefault(self.keyid, {})
            known = models.get(self.model_name)
            if known is not None and known.get("version", 0) >= self.version:
                return  # nothing new (or a newer one was accepted meanwhile): no write
            models[self.model_name] = {"version": self.version, "manifest_sha256": self.manifest_sha256,
                                       "accepted_at": format_time(utc_now())}
            write_json(state, self.state_path)


def resolve_trust(trust: Trust) -> Optional[str]:
    """The trust key's path: `trust`, or DDRNET_TRUST for None; no key for False or ''."""
    if trust is None:
        trust = os.environ.get(TRUST_ENV, "")
    return trust or None


def trust_option(trust: Trust) -> str:
    """How the user named the key, for messages."""
    return "--trust" if trust else TRUST_ENV


def check_trust(trust: Trust) -> None:
    """Validate the trust key before any work (raises DDRNetError)."""
    path = resolve_trust(trust)
    if path is not None:
        load_public_key(path, trust_option(trust))


def default_state_path() -> str:
    """DDRNET_TRUST_STATE, else $XDG_STATE_HOME/ddrnet/trust-state.json (~/.local/state by default)."""
    if os.environ.get(STATE_ENV):
        return os.environ[STATE_ENV]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "ddrnet", "trust-state.json")


def read_state(path: str) -> dict:
    """The accepted versions: {"format": 1, "accepted": {keyid: {model_name: {"version": N, ...}}}}.
    A state file that cannot be read is refused, not reset: a reset would allow a rollback."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return {"format": STATE_FORMAT, "accepted": {}}
    except (OSError, ValueError) as err:
        raise DDRNetError("{}: unreadable trust state ({}); {}".format(path, err, _STATE_HINT)) from None
    if not (isinstance(state, dict) and state.get("format") == STATE_FORMAT
            and isinstance(state.get("accepted"), dict)
            and all(isinstance(m, dict) and all(isinstance(v, dict) for v in m.values())
                    for m in state["accepted"].values())):
        raise DDRNetError("{}: not a trust state file; {}".format(path, _STATE_HINT))
    return state


_STATE_HINT = ("delete it only if every bundle this device may see is trusted (it holds the versions "
               "that protect against rollback), or point {} at another file".format(STATE_ENV))


@contextlib.contextmanager
def _locked(state_path: str) -> Iterator[None]:
    """Serialise read-modify-write of the state between processes (a stream and a bench at once)."""
    import fcntl  # POSIX: the runtime's targets (Linux, Jetson)

    try:
        os.makedirs(os.path.dirname(os.path.abspath(state_path)), exist_ok=True)
        lock = open(state_path + ".lock", "a")
    except OSError as err:
        raise DDRNetError("{}: cannot record the accepted version ({}); set {} to a writable file".format(
            state_path, err.strerror or err, STATE_ENV)) from None
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def _load_signature(path: str) -> Tuple[dict, str, bytes]:
    """(signed payload, keyid, signature bytes) of a signature file, shape-checked only."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            document = json.load(f)
        signed, keyid = document["signed"], document["keyid"]
        sig = base64.b64decode(document["sig"], validate=True)
    except FileNotFoundError:
        raise DDRNetError("{}: missing: the bundle is unsigned and a trust key is set (sign it with "
                          "ddrnet sign)".format(path)) from None
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as err:
        raise DDRNetError("{}: not a valid signature file ({})".format(path, err)) from None
    if not (isinstance(signed, dict) and isinstance(keyid, str)):
        raise DDRNetError("{}: not a valid signature file".format(path))
    return signed, keyid, sig


def _check_payload(signed: dict, path: str) -> None:
    version = signed.get("version")
    try:
        parse_time(str(signed.get("expires")))
        ok = (signed.get("type") == PAYLOAD_TYPE and isinstance(signed.get("model_name"), str)
              and isinstance(version, int) and not isinstance(version, bool) and version > 0
              and _SHA256.fullmatch(str(signed.get("manifest_sha256"))) is not None)
    except ValueError:
        ok = False
    if not ok:
        raise DDRNetError("{}: signed content is not a {} payload".format(path, PAYLOAD_TYPE))


def verify_signature(model_dir: str, manifest_bytes: bytes, public_key: bytes, keyid: str,
                     now: Optional[datetime.datetime] = None) -> dict:
    """The signed payload, once it is signed by `public_key` (raw Ed25519), covers these deploy.yaml bytes
    and has not expired (raises DDRNetError otherwise)."""
    path = signature_path(model_dir)
    signed, signer, sig = _load_signature(path)
    if signer != keyid:
        raise DDRNetError("{}: signed by key {}, not by the trusted key {}".format(path, signer[:16], keyid[:16]))
    if not verify_ed25519(public_key, sig, canonical(signed)):
        raise DDRNetError("{}: bad signature (the signed content was changed, or the signature "
                          "forged)".format(path))
    _check_payload(signed, path)
    if hashlib.sha256(manifest_bytes).hexdigest() != signed["manifest_sha256"]:
        raise DDRNetError("{}: does not match the bundle's signature (changed after signing)".format(
            os.path.join(model_dir, MANIFEST_NAME)))
    now = now or utc_now()
    if now >= parse_time(signed["expires"]):
        raise DDRNetError("{}: signature expired at {} (the fleet must re-sign the bundle)".format(
            path, signed["expires"]))
    return signed


def check_rollback(state_path: str, keyid: str, signed: dict, model_dir: str) -> None:
    known = read_state(state_path)["accepted"].get(keyid, {}).get(signed["model_name"])
    if known is None:
        return
    path, version = signature_path(model_dir), signed["version"]
    if version < known.get("version", 0):
        raise DDRNetError("{}: version {} of {} is older than version {} already accepted on this device "
                          "(rollback refused; state in {})".format(path, version, signed["model_name"],
                                                                   known["version"], state_path))
    if version == known.get("version") and signed["manifest_sha256"] != known.get("manifest_sha256"):
        raise DDRNetError("{}: version {} of {} was already accepted with other content (a version is "
                          "signed once)".format(path, version, signed["model_name"]))


@functools.lru_cache(maxsize=None)
def _warn_unauthenticated() -> None:
    """Once per process: a service opening many models would otherwise repeat it."""
    log.warning("warning: model bundles are not authenticated (no --trust key or %s): anyone who can "
                "write a model dir can change what runs", TRUST_ENV)


def authenticate(model_dir: str, trust: Trust = None) -> Tuple[bytes, Optional[Accepted]]:
    """deploy.yaml's bytes, read once, after its signature when a trust key is set (`trust`, or
    DDRNET_TRUST for None; False: no check, for a model dir this process just wrote). Parse those
    bytes (load_manifest(data=...)), which also checks every file's SHA-256, and call accept() once
    the model has loaded. The Accepted is None without a trust key."""
    key_path = resolve_trust(trust)
    data = read_manifest_bytes(model_dir)
    if key_path is None:
        return data, None
    public_key, keyid = load_public_key(key_path, trust_option(trust))
    signed = verify_signature(model_dir, data, public_key, keyid)
    state_path = default_state_path()
    check_rollback(state_path, keyid, signed, model_dir)
    return data, Accepted(state_path, keyid, signed["model_name"], signed["version"], signed["manifest_sha256"],
                          signed["expires"])


def accept(accepted: Optional[Accepted], trust: Trust) -> None:
    """Once the model has loaded and passed every check: record a verified bundle's version as the
    newest this device ran, or warn (once per process) that the bundle runs unauthenticated. Not
    before: a refused bundle gets its one-line error and nothing else."""
    if accepted is None:
        if trust is not False:
            _warn_unauthenticated()
        return
    accepted.record()
    log.info("signed bundle %s version %d verified (key %s, expires %s)", accepted.model_name, accepted.version,
             accepted.keyid[:16], accepted.expires)
    left = parse_time(accepted.expires) - utc_now()
    if left < EXPIRY_WARNING:
        log.warning("warning: the signature of %s version %d expires in %d day(s), at %s: the fleet must re-sign "
                    "it, or this device stops running it then", accepted.model_name, accepted.version, left.days,
                    accepted.expires)
