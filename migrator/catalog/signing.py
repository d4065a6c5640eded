"""Signed manifests: an ed25519 signature over a manifest's exact stored bytes, in `manifest.sig`.

The manifest covers every object's sha256, the plan copy and the parent link, so a valid signature
authenticates the whole snapshot. `cryptography` is imported only when a signature is made or checked."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field

from migrator import strictjson
from migrator.catalog.snapshot import Snapshot
from migrator.errors import IntegrityError, UsageError

SIGNATURE = "manifest.sig"
MAX_SIGNATURE_BYTES = 4096
SIGNATURE_FORMAT = 1
# 32 bytes in canonical base64: 42 free characters, a last one whose two low bits are zero, one "=".
PUBLIC_KEY = re.compile(r"^ed25519:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=\Z")

VALID, UNCHECKED, UNSIGNED = "valid", "unchecked", "unsigned"


def public_key_text(raw: bytes) -> str:
    return "ed25519:" + base64.b64encode(raw).decode()


def key_text_of(private_key) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key_text(private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def is_public_key(text: str) -> bool:
    return isinstance(text, str) and PUBLIC_KEY.match(text) is not None


def sign(private_key, manifest_bytes: bytes) -> bytes:
    """The `manifest.sig` document for these exact manifest bytes."""
    doc = {"format": SIGNATURE_FORMAT, "algorithm": "ed25519", "key": key_text_of(private_key),
           "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode()}
    return json.dumps(doc, sort_keys=True).encode() + b"\n"


@dataclass
class TrustedKeys:
    """The public keys a snapshot's signature may come from; empty = signatures are not checked."""
    texts: list[str] = field(default_factory=list)
    _checked: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (store, vsn, id) -> status

    @classmethod
    def of(cls, plan_keys: list[str] | None, extra: list[str] | None = None) -> TrustedKeys:
        """The plan's backup.trusted_keys (schema-checked) and keys given on the command line."""
        texts: list[str] = []
        given = [(f"backup.trusted_keys[{n}]", t) for n, t in enumerate(plan_keys or [])]
        given += [("--trusted-key", t) for t in extra or []]
        for where, text in given:
            text = text.strip() if isinstance(text, str) else text
            if not is_public_key(text):
                # The value is not echoed: a private key pasted by mistake must not land in a log.
                raise UsageError(f"{where} is not an ed25519 public key",
                                 hint="give the key `migrator key show` prints on the VSN that took the "
                                      "snapshots: ed25519:<base64 of 32 bytes>")
            if text not in texts:
                texts.append(text)
        return cls(texts)

    def __bool__(self) -> bool:
        return bool(self.texts)

    def signer(self, data: bytes, doc: dict) -> str | None:
        """The trusted key whose signature `doc` is over `data`, or None."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        signature = base64.b64decode(doc["signature"])
        for text in self.texts:
            try:
                Ed25519PublicKey.from_public_bytes(base64.b64decode(text[8:])).verify(signature, data)
            except (InvalidSignature, ValueError):
                continue
            return text
        return None

    def check(self, snap: Snapshot) -> str:
        """One snapshot's signature: VALID (by a trusted key), or with no trusted keys UNCHECKED (signed)
        or UNSIGNED. With trusted keys, a missing, malformed or untrusted signature, or a manifest
        changed since it was signed, is an IntegrityError."""
        memo = (snap.store.url, snap.vsn, snap.id)
        if memo in self._checked:
            return self._checked[memo]
        where = f"snapshot {snap.id} in {snap.store.url}"
        if not self.texts:
            status = UNCHECKED if snap.object_size(SIGNATURE) is not None else UNSIGNED
        else:
            if snap.object_size(SIGNATURE) is None:
                raise IntegrityError(f"{where} is not signed (no {SIGNATURE}), and trusted keys are configured",
                                     hint="it was taken before signed snapshots or its signature was removed in "
                                          "the store; nothing was read from it")
            doc = _parse(snap.store.get_bytes(snap.key(SIGNATURE), MAX_SIGNATURE_BYTES), where)
            data = snap.manifest_bytes()
            if self.signer(data, doc) is None:
                if doc["key"] not in self.texts:
                    raise IntegrityError(f"{where} is signed by {doc['key']}, which is not a trusted key",
                                         hint="add the key of the VSN that took it to backup.trusted_keys (or "
                                              "--trusted-key) if you trust that VSN; nothing was read from it")
                raise IntegrityError(f"the signature of {where} does not match its manifest: the manifest was "
                                     f"changed after it was signed")
            status = VALID
        self._checked[memo] = status
        return status

    def check_chain(self, snap: Snapshot, volumes: list[str]) -> dict[str, str]:
        """Snapshot id -> status for `snap` (first) and every link of the chains of `volumes` a restore
        reads. Every link is checked, so every parent link followed is authenticated too."""
        statuses = {snap.id: self.check(snap)}
        for volume in volumes:
            for link in snap.chain(volume):
                if link.id not in statuses:
                    statuses[link.id] = self.check(link)
        return statuses


def summary(statuses: dict[str, str]) -> str:
    """One word for a set of snapshots: VALID when every one is, else UNSIGNED when any is, else UNCHECKED."""
    values = set(statuses.values())
    if values == {VALID}:
        return VALID
    return UNSIGNED if UNSIGNED in values else UNCHECKED


def _parse(data: bytes, where: str) -> dict:
    try:
        doc = strictjson.loads(data)
    except ValueError:
        raise IntegrityError(f"the signature of {where} is not valid JSON") from None
    if (not isinstance(doc, dict) or set(doc) != {"format", "algorithm", "key", "signature"}
            or type(doc["format"]) is not int or doc["format"] != SIGNATURE_FORMAT or doc["algorithm"] != "ed25519"
            or not is_public_key(doc["key"]) or not isinstance(doc["signature"], str)):
        raise IntegrityError(f"the signature of {where} is malformed (expected format {SIGNATURE_FORMAT}, ed25519)")
    try:
        raw = base64.b64decode(doc["signature"], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 64:
        raise IntegrityError(f"the signature of {where} is malformed (not 64 bytes of base64)")
    return doc
