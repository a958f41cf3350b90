"""``dicomsvc keys rotate --new-key-file F``: re-wrap every blob's data key under a new master key.

Only each object's header is rewritten (in place, fsynced: ``dicomsvc.storage.crypt.rewrap``),
never its body. Run it on the server's machine, against ``DICOMSVC_DATA_DIR``; the keys
configured (``DICOMSVC_ENCRYPTION_KEY[_FILE]``) unwrap, the first key in F wraps. Interrupted,
run it again: objects already under the new key are skipped. See README "Encryption at rest"
for the order of steps that keeps a running service reading every object meanwhile.
"""

import argparse
import sys
from pathlib import Path

from ..config import Config, parse_key


def add_parser(commands) -> None:
    keys = commands.add_parser("keys", help="encryption at rest: master key rotation")
    actions = keys.add_subparsers(dest="action", required=True)
    rotate = actions.add_parser("rotate", help="re-wrap every blob's data key under a new master key")
    rotate.add_argument("--new-key-file", required=True, type=Path, help="the new master key (base64, first line)")


def run(args: argparse.Namespace, each=None) -> int:
    from ..storage.crypt import Keyring, rotate_tree

    try:
        config = Config.from_env()
        lines = [line for line in args.new_key_file.read_text().splitlines() if line.strip()]
        if not lines:
            raise ValueError("--new-key-file holds no key")
        new = parse_key(lines[0], "--new-key-file")
    except (ValueError, OSError) as exc:
        print(f"dicomsvc keys: {exc}", file=sys.stderr)
        return 2
    if not config.encryption_keys:
        print("dicomsvc keys: no encryption key configured (DICOMSVC_ENCRYPTION_KEY[_FILE])", file=sys.stderr)
        return 2
    keyring = Keyring(tuple(dict.fromkeys((new, *config.encryption_keys))), config.encryption_chunk_bytes)
    done = rotate_tree(config.blob_dir, keyring, new, each)
    print(
        f"re-wrapped {done.rewrapped}, already under the new key {done.skipped}, "
        f"plaintext (left) {done.plaintext}, damaged {done.damaged}"
    )
    return 1 if done.damaged else 0
