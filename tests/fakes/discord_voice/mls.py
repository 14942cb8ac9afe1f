"""The voice server's part of MLS (RFC 9420) in DAVE: the external sender and its proposals.

Discord's voice gateway is the MLS group's *external sender*: it announces a signing key (op 25)
and signs the Add and Remove proposals (op 27) that it asks the members to commit. davey builds
key packages, commits and welcomes itself but not this side, so the fake does it here, encoded
with the TLS presentation language of RFC 9420 (section 2.1) and signed with ECDSA P-256/SHA-256,
the signature scheme of DAVE's only cipher suite (MLS_128_DHKEMP256_AES128GCM_SHA256_P256, 2).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

# RFC 9420 section 6: ProtocolVersion mls10, WireFormat, ContentType, SenderType.
MLS_VERSION_10 = 1
WIRE_FORMAT_PUBLIC_MESSAGE = 1
CONTENT_TYPE_PROPOSAL = 2
SENDER_TYPE_EXTERNAL = 2
# RFC 9420 section 12.1: ProposalType add / remove.
PROPOSAL_ADD = 1
PROPOSAL_REMOVE = 3
# RFC 9420 section 5.3: CredentialType basic.
CREDENTIAL_BASIC = 1
# RFC 9420 section 5.2: RefHash label of a proposal reference (used by op 27 "revoke").
PROPOSAL_REF_LABEL = b"MLS 1.0 Proposal Reference"
SIGN_LABEL_PREFIX = b"MLS 1.0 "
FRAMED_CONTENT_TBS_LABEL = b"FramedContentTBS"


def varint(value: int) -> bytes:
    """RFC 9420 section 2.1.2 variable-size length: 1, 2 or 4 bytes, the top two bits say which."""
    if value < 1 << 6:
        return bytes([value])
    if value < 1 << 14:
        return struct.pack(">H", value | 0x4000)
    if value < 1 << 30:
        return struct.pack(">I", value | 0x8000_0000)
    raise ValueError("too long for an MLS vector")


def vector(data: bytes) -> bytes:
    """`opaque data<V>`: the length as a varint, then the bytes."""
    return varint(len(data)) + data


def read_varint(data: bytes, offset: int) -> tuple[int, int]:
    """(value, next offset) of the varint at `offset`."""
    first = data[offset]
    prefix = first >> 6
    if prefix == 0:
        return first, offset + 1
    if prefix == 1:
        return struct.unpack_from(">H", data, offset)[0] & 0x3FFF, offset + 2
    if prefix == 2:
        return struct.unpack_from(">I", data, offset)[0] & 0x3FFF_FFFF, offset + 4
    raise ValueError("invalid MLS varint")


def read_vector(data: bytes, offset: int) -> tuple[bytes, int]:
    """(bytes, next offset) of the `opaque<V>` at `offset`."""
    length, offset = read_varint(data, offset)
    return data[offset : offset + length], offset + length


def group_id(channel_id: int) -> bytes:
    """DAVE's MLS group id: the voice channel's snowflake as a big-endian u64."""
    return struct.pack(">Q", channel_id)


@dataclass(frozen=True)
class ExternalSender:
    """The voice gateway's signing identity in a DAVE group."""

    key: ec.EllipticCurvePrivateKey
    identity: bytes

    @classmethod
    def generate(cls, identity: bytes = b"parley-fake-voice-gateway") -> ExternalSender:
        return cls(ec.generate_private_key(ec.SECP256R1()), identity)

    @property
    def public_key(self) -> bytes:
        """The uncompressed SEC1 point, as MLS carries a P-256 SignaturePublicKey."""
        return self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def package(self) -> bytes:
        """Op 25's payload: `struct { SignaturePublicKey signature_key; Credential credential }`."""
        credential = struct.pack(">H", CREDENTIAL_BASIC) + vector(self.identity)
        return vector(self.public_key) + credential

    def add_proposal(self, channel_id: int, epoch: int, key_package: bytes) -> bytes:
        """An MLSMessage (PublicMessage) carrying a signed Add of `key_package`."""
        return self._proposal(channel_id, epoch, struct.pack(">H", PROPOSAL_ADD) + key_package)

    def remove_proposal(self, channel_id: int, epoch: int, leaf_index: int) -> bytes:
        """An MLSMessage (PublicMessage) carrying a signed Remove of the member at `leaf_index`."""
        return self._proposal(
            channel_id, epoch, struct.pack(">H", PROPOSAL_REMOVE) + struct.pack(">I", leaf_index)
        )

    def _proposal(self, channel_id: int, epoch: int, proposal: bytes) -> bytes:
        # FramedContent (RFC 9420 section 6): group id, epoch, sender (external, index 0),
        # empty authenticated data, content type proposal, the proposal.
        content = (
            vector(group_id(channel_id))
            + struct.pack(">Q", epoch)
            + struct.pack(">BI", SENDER_TYPE_EXTERNAL, 0)
            + vector(b"")
            + bytes([CONTENT_TYPE_PROPOSAL])
            + proposal
        )
        header = struct.pack(">HH", MLS_VERSION_10, WIRE_FORMAT_PUBLIC_MESSAGE)
        # FramedContentTBS for an external sender has no GroupContext (section 6.1), and is
        # signed with SignWithLabel (section 5.1.2): SignContent{label, content}.
        tbs = header + content
        sign_content = vector(SIGN_LABEL_PREFIX + FRAMED_CONTENT_TBS_LABEL) + vector(tbs)
        signature = self.key.sign(sign_content, ec.ECDSA(hashes.SHA256()))  # DER, as MLS uses
        # PublicMessage = content, auth (signature; no confirmation tag for a proposal), and
        # no membership tag: the sender is not a member.
        return header + content + vector(signature)


def proposal_ref(message: bytes) -> bytes:
    """RFC 9420 section 5.2: RefHash("MLS 1.0 Proposal Reference", AuthenticatedContent).

    For a PublicMessage without membership tag the AuthenticatedContent is the message itself.
    """
    value = vector(PROPOSAL_REF_LABEL) + vector(message)
    return hashlib.sha256(value).digest()


def proposals_payload(messages: list[bytes]) -> bytes:
    """Op 27 "append": `MLSMessage proposal_messages<V>`."""
    return vector(b"".join(messages))


def revoke_payload(refs: list[bytes]) -> bytes:
    """Op 27 "revoke": `ProposalRef proposal_refs<V>` (each an `opaque<V>` hash)."""
    return vector(b"".join(vector(ref) for ref in refs))


def split_commit_welcome(data: bytes) -> tuple[bytes, bytes | None]:
    """Op 28's payload: an MLSMessage commit directly followed by an optional Welcome.

    Walks the PublicMessage commit (RFC 9420 sections 6 and 12.4) to find where it ends.
    """
    offset = 4  # version, wire format
    _, offset = read_vector(data, offset)  # group id
    offset += 8  # epoch
    sender_type = data[offset]
    offset += 1
    if sender_type in (1, 2):  # member / external: a u32 index
        offset += 4
    _, offset = read_vector(data, offset)  # authenticated data
    content_type = data[offset]
    offset += 1
    if content_type != 3:
        raise ValueError("op 28 does not start with a commit")
    # Commit: ProposalOrRef proposals<V>; optional<UpdatePath> path.
    _, offset = read_vector(data, offset)
    present = data[offset]
    offset += 1
    if present:
        offset = _skip_update_path(data, offset)
    _, offset = read_vector(data, offset)  # signature
    _, offset = read_vector(data, offset)  # confirmation tag
    if sender_type == 1:
        _, offset = read_vector(data, offset)  # membership tag
    welcome = data[offset:] or None
    return data[:offset], welcome


def _skip_update_path(data: bytes, offset: int) -> int:
    offset = _skip_leaf_node(data, offset)
    _, offset = read_vector(data, offset)  # UpdatePathNode nodes<V>
    return offset


def _skip_leaf_node(data: bytes, offset: int) -> int:
    _, offset = read_vector(data, offset)  # encryption key
    _, offset = read_vector(data, offset)  # signature key
    credential_type = struct.unpack_from(">H", data, offset)[0]
    offset += 2
    if credential_type == CREDENTIAL_BASIC:
        _, offset = read_vector(data, offset)
    else:  # x509: a vector of certificates
        _, offset = read_vector(data, offset)
    # Capabilities: versions, cipher suites, extensions, proposals, credentials (all <V>).
    for _ in range(5):
        _, offset = read_vector(data, offset)
    source = data[offset]
    offset += 1
    if source == 1:  # key_package: Lifetime (two u64)
        offset += 16
    elif source == 3:  # commit: parent hash
        _, offset = read_vector(data, offset)
    _, offset = read_vector(data, offset)  # extensions
    _, offset = read_vector(data, offset)  # signature
    return offset
