"""Sign an exported model bundle for over-the-air delivery: writes DIR/signature.json.

The signature covers deploy.yaml (which holds the SHA-256 of every file, checked first), a bundle
version and an expiry date. Cars with `--trust KEY.pub` run the bundle only while the signature is
valid and unexpired, and never a version older than one they already ran. Sign after the last change
to the bundle (`ddrnet engine` adds engines to deploy.yaml: build them first).

examples:
  ddrnet sign --model export/int8 --key keys/fleet.key                # version: the time, YYYYMMDDhhmmss
  ddrnet sign --model export/int8 --key keys/fleet.key --version 42 --expires 2027-06-30
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ddrnet.runtime.signing import DEFAULT_EXPIRY

    parser.add_argument("--model", metavar="DIR", required=True, help="exported model dir (with deploy.yaml)")
    parser.add_argument("--key", metavar="KEY", required=True, help="private key from ddrnet keygen (OUT.key)")
    parser.add_argument("--version", type=int, metavar="N",
                        help="bundle version, a positive integer that only goes up per model name "
                             "(default: the signing time as YYYYMMDDhhmmss)")
    parser.add_argument("--expires", default=DEFAULT_EXPIRY, metavar="WHEN",
                        help="days from now (e.g. 90d) or a UTC date, 2027-06-30 or 2027-06-30T12:00:00Z "
                             "(default {}); cars refuse the bundle after it".format(DEFAULT_EXPIRY))


def run(args: argparse.Namespace) -> int:
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.fileio import check_output_file
    from ddrnet.runtime.manifest import read_manifest_bytes
    from ddrnet.runtime.signing import (format_time, load_private_key, parse_expiry, sign_bundle,
                                        signature_path, utc_now)

    now = utc_now()
    if args.version is not None and args.version < 1:
        raise DDRNetError("--version {}: must be a positive integer".format(args.version))
    expires = parse_expiry(args.expires, now)
    key = load_private_key(args.key)
    read_manifest_bytes(args.model)  # a model dir at all, before any hashing
    check_output_file(signature_path(args.model), "--model", inputs=[args.key])
    signed = sign_bundle(args.model, key, args.version, expires, now)
    print("signed {}: {} version {}, expires {}, {}".format(
        signature_path(args.model), signed["model_name"], signed["version"], format_time(expires),
        "deploy.yaml sha256 " + signed["manifest_sha256"][:16]))
    return 0
