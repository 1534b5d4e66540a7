"""The Ed25519 key that signs a store's deletion receipts.

Default: ``STORE/keys/receipt-signing-key.pem`` (PKCS#8 PEM, mode 0600 in a 0700 folder,
created on first use), outside the data files (``blobs/``, ``expunge.sqlite``); or the file
given by ``set_signing_key(path)`` / ``expunge.open(path, signing_key=...)`` /
``--signing-key``, or by ``EXPUNGE_SIGNING_KEY``. An operator who keeps it outside the
store (a secrets mount) can hand the store to anyone without handing over the power to
forge receipts. Key files given by the operator must not be readable by group or others
(like ssh keys). An in-memory store (``store=None``) gets a fresh key that lives as long as
the store.

(Subject hashes use the store's own secret, ``secret.key``, through
:meth:`expunge.store.Store.keyed_digest`: see :mod:`expunge.store.subjects`.)
"""

from __future__ import annotations

import hashlib
import os
import stat
import weakref
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from expunge.exceptions import InvalidParameterError, StoreError
from expunge.store._atomic import atomic_write
from expunge.store._directory import DirectoryStore
from expunge.store._store import Store

KEYS_DIR = "keys"
SIGNING_KEY_FILE = "receipt-signing-key.pem"
SIGNING_KEY_ENV = "EXPUNGE_SIGNING_KEY"


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 32 hex digits of SHA-256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_private_mode(path: Path, what: str) -> None:
    """Refuse a key file that others (not the owner, not the group) may access: the group
    may be the team that runs the store; everybody else may not."""
    mode = path.stat().st_mode
    if mode & stat.S_IRWXO:
        raise InvalidParameterError(
            f"The {what} {str(path)!r} is accessible to others (mode "
            f"{stat.S_IMODE(mode):04o}); it must be private: chmod 600 {str(path)!r} (or 640 "
            "for a team that shares the store through a group)."
        )


def _create_private(path: Path, content: bytes) -> None:
    """Write ``content`` to a new file of mode 0600 inside a 0700 folder, atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        os.chmod(tmp, 0o600)  # mkstemp's mode already; said again because it matters here
        tmp.write_bytes(content)

    atomic_write(path, write)


def _read_file(path: Path, what: str) -> bytes:
    try:
        _check_private_mode(path, what)
        return path.read_bytes()
    except OSError as err:
        raise StoreError(
            f"Cannot read the {what} {str(path)!r}: {err.strerror}. Each process that writes "
            "to the store signs receipts: give it a key it can read (--signing-key, "
            "EXPUNGE_SIGNING_KEY), e.g. one file of mode 640 for a group that shares the store."
        ) from err


class KeyRing:
    """A store's signing key, loaded lazily and cached."""

    def __init__(self, store: Store) -> None:
        self._root = Path(store.location) if isinstance(store, DirectoryStore) else None
        self._signing: Ed25519PrivateKey | None = None
        self.signing_key_path: Path | None = None  # set by the operator; else env/default

    # ------------------------------------------------------------- signing
    def signing_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key that signs this store's receipts (created on first use)."""
        if self._signing is None:
            self._signing = self._load_signing_key()
        return self._signing

    def _load_signing_key(self) -> Ed25519PrivateKey:
        path = self.signing_key_path
        if path is None and os.environ.get(SIGNING_KEY_ENV):
            path = Path(os.environ[SIGNING_KEY_ENV])
        if path is None:
            if self._root is None:
                return Ed25519PrivateKey.generate()
            path = self._root / KEYS_DIR / SIGNING_KEY_FILE
            if not path.exists():
                key = Ed25519PrivateKey.generate()
                _create_private(path, key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption()))
        data = _read_file(path, "signing key")
        try:
            loaded = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as err:
            raise InvalidParameterError(
                f"{str(path)!r} is not an unencrypted PEM private key ({err}). Create one with "
                "`openssl genpkey -algorithm ed25519 -out key.pem`."
            ) from err
        if not isinstance(loaded, Ed25519PrivateKey):
            raise InvalidParameterError(
                f"{str(path)!r} holds a {type(loaded).__name__}, not an Ed25519 key. Create one "
                "with `openssl genpkey -algorithm ed25519 -out key.pem`."
            )
        return loaded

    def use_signing_key(self, path: str | Path) -> None:
        """Sign with the key at ``path`` from now on (checked now: errors change nothing)."""
        previous, self.signing_key_path = (self._signing, self.signing_key_path), Path(path)
        self._signing = None
        try:
            self.signing_key()
        except BaseException:
            self._signing, self.signing_key_path = previous
            raise


_RINGS: weakref.WeakKeyDictionary[Store, KeyRing] = weakref.WeakKeyDictionary()


def keyring(store: Store) -> KeyRing:
    """The key ring of ``store`` (one per store object, so a memory store keeps its keys)."""
    ring = _RINGS.get(store)
    if ring is None:
        ring = _RINGS[store] = KeyRing(store)
    return ring
