"""Make the fleet's signing key pair: OUT.key (private, mode 0600) and OUT.pub (public).

Keep OUT.key on the fleet's signing server only (offline, or in an HSM-backed account); OUT.pub is
what every car trusts (`--trust OUT.pub` or DDRNET_TRUST). Set DDRNET_KEY_PASSPHRASE to encrypt
OUT.key with it (`ddrnet sign` then needs the same variable). An existing key is never overwritten.

example:
  ddrnet keygen keys/fleet          # keys/fleet.key, keys/fleet.pub; prints the key id
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="path without extension: writes OUT.key and OUT.pub")


def run(args: argparse.Namespace) -> int:
    from ddrnet.runtime.signing import generate_keypair, key_paths

    keyid = generate_keypair(args.out)
    private_path, public_path = key_paths(args.out)
    print("private key {} (keep it secret), public key {}, key id {}".format(private_path, public_path, keyid))
    return 0
