"""One round of secure aggregation (Bonawitz et al., CCS 2017), semi-honest setting, split into the
client's part (ClientMasker) and the server's (sum_masked, reconstruct_secrets, unmask) so the same
code runs in one process (SecureAggregator) or across ranks (the caller moves the messages).

Round 0  every client u publishes PublicKeys: c_u (X25519, encrypts shares), s_u (X25519, pairwise
         masks), and a commitment to its self-mask seed b_u. The server forwards the list to all.
Round 1  u Shamir-shares s_u's private key and b_u among all clients (threshold t) and sends each
         peer its two shares, AES-GCM encrypted under HKDF(X25519(c_u, c_v)), through the server.
Round 2  u sends y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)  (mod 2**k), where
         x_u is the fixed-point update and s_uv = HKDF(X25519(s_u, s_v), round_seed).
Round 3  the server names the survivors (their y arrived) and the dropped (shared keys in round 1,
         no y). Each survivor returns its shares of b_u for survivors and of s_u for the dropped, never
         both for one client. With t answers the server rebuilds the seeds (checked against round 0),
         removes the self masks of survivors and the dropped clients' pairwise masks, and decodes.
Fewer than t survivors or answers, or a secret that fails its check: RoundDiscarded (logged), never a
wrong sum.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fastlm.federated.secure import masks
from fastlm.federated.secure.fixed_point import FixedPoint
from fastlm.federated.secure.shamir import Share, reconstruct, split
from fastlm.train.errors import FastlmError

log = logging.getLogger(__name__)

ID_BYTES = 4
SELF_MASK, MASK_KEY = "b", "s"   # what a revealed share is a share of


class RoundDiscarded(FastlmError):
    """The round cannot be unmasked (too few survivors or answers, a bad secret): drop its updates."""

    def __init__(self, reason: str):
        super().__init__(f"secure aggregation round discarded: {reason}")
        self.reason = reason


def _discard(reason: str) -> RoundDiscarded:
    log.warning("secure aggregation round discarded: %s", reason)
    return RoundDiscarded(reason)


@dataclass(frozen=True)
class PublicKeys:
    """What client u publishes in round 0."""
    client_id: int
    channel_key: bytes           # c_u: X25519 public key for the encrypted shares
    mask_key: bytes              # s_u: X25519 public key for the pairwise masks
    self_mask_commitment: bytes  # HKDF of b_u: catches a wrongly reconstructed seed

    @property
    def nbytes(self) -> int:
        return ID_BYTES + len(self.channel_key) + len(self.mask_key) + len(self.self_mask_commitment)


@dataclass(frozen=True)
class RecoveredSecrets:
    """What the server rebuilt in round 3."""
    self_mask_seeds: dict[int, bytes]     # b_u of each survivor
    mask_private_keys: dict[int, bytes]   # s_u's private key of each dropped client


def _check_id(client_id) -> int:
    if isinstance(client_id, bool) or not isinstance(client_id, int) or not 0 <= client_id < (1 << 31) - 1:
        raise FastlmError(f"secure aggregation: client id {client_id!r}, expected an int in [0, 2**31 - 1)")
    return client_id


def _check_round_seed(round_seed) -> bytes:
    if not isinstance(round_seed, (bytes, bytearray)):
        raise FastlmError(f"secure aggregation: round_seed must be bytes, got {type(round_seed).__name__}")
    return bytes(round_seed)


def _check_threshold(threshold, n_clients: int) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 2 <= threshold <= n_clients:
        raise FastlmError(f"secure aggregation: threshold={threshold!r} with {n_clients} clients, "
                          f"expected an int in [2, {n_clients}]")
    return threshold


def _pairwise_key(private: X25519PrivateKey | bytes, peer_mask_key: bytes, round_seed: bytes, u: int, v: int) -> bytes:
    return masks.derive_key(masks.agree(private, peer_mask_key), round_seed, "pairwise-mask", min(u, v), max(u, v))


def _self_mask_key(seed: bytes, round_seed: bytes, u: int) -> bytes:
    return masks.derive_key(seed, round_seed, "self-mask", u)


def _channel_key(private: X25519PrivateKey, peer_channel_key: bytes, round_seed: bytes, u: int, v: int) -> bytes:
    return masks.derive_key(masks.agree(private, peer_channel_key), round_seed, "channel", min(u, v), max(u, v))


def _route(sender: int, recipient: int, round_seed: bytes) -> bytes:
    """AES-GCM associated data: a share message is only valid from sender to recipient in this round."""
    return sender.to_bytes(ID_BYTES, "big") + recipient.to_bytes(ID_BYTES, "big") + round_seed


class ClientMasker:
    """Client u's side of one round: fresh keys and self-mask seed, held shares of the others' secrets."""

    def __init__(self, client_id: int, round_seed: bytes, fixed_point: FixedPoint):
        self.client_id = _check_id(client_id)
        self.round_seed = _check_round_seed(round_seed)
        self.fixed_point = fixed_point
        self._channel = masks.new_private_key()
        self._mask = masks.new_private_key()
        self._seed = masks.random_seed()
        self._peers: dict[int, PublicKeys] = {}
        self._threshold = 0
        self._held: dict[int, tuple[Share, Share]] = {}   # client v -> (share of s_v's key, share of b_v)
        self._revealed: dict[int, str] = {}               # client v -> which of its secrets this client revealed
        self._masked = False

    def public_keys(self) -> PublicKeys:
        return PublicKeys(self.client_id, masks.public_bytes(self._channel), masks.public_bytes(self._mask),
                          masks.self_mask_commitment(self._seed, self.round_seed, self.client_id))

    def shares_for(self, peers: Mapping[int, PublicKeys], threshold: int) -> dict[int, bytes]:
        """Round 1: encrypted shares of s_u's private key and b_u for each peer (id -> message).

        peers: the public keys of the round's clients (this one may be included)."""
        for v, keys in peers.items():
            if keys.client_id != v:
                raise FastlmError(f"secure aggregation: public keys of client {keys.client_id} filed under {v}")
        if self.client_id in peers and peers[self.client_id] != self.public_keys():
            raise FastlmError(f"secure aggregation: the keys listed for client {self.client_id} are not its own")
        everyone = sorted(set(peers) | {self.client_id})
        self._threshold = _check_threshold(threshold, len(everyone))
        self._peers = {**peers, self.client_id: self.public_keys()}
        points = [v + 1 for v in everyone]  # Shamir points must be nonzero
        key_shares = split(masks.private_bytes(self._mask), points, threshold)
        seed_shares = split(self._seed, points, threshold)
        self._held[self.client_id] = (key_shares[self.client_id + 1], seed_shares[self.client_id + 1])
        messages = {}
        for v in everyone:
            if v != self.client_id:
                plaintext = key_shares[v + 1].to_bytes() + seed_shares[v + 1].to_bytes()
                key = _channel_key(self._channel, peers[v].channel_key, self.round_seed, self.client_id, v)
                messages[v] = masks.encrypt(key, plaintext, _route(self.client_id, v, self.round_seed))
        return messages

    def receive_shares(self, messages: Mapping[int, bytes]) -> None:
        """Round 1: the shares the other clients sent this one (sender id -> message)."""
        if not self._peers:
            raise FastlmError("secure aggregation: receive_shares before shares_for (the peers' keys are unknown)")
        for sender, message in messages.items():
            if sender not in self._peers or sender == self.client_id:
                raise FastlmError(f"secure aggregation: client {self.client_id} got shares from unknown client {sender}")
            key = _channel_key(self._channel, self._peers[sender].channel_key, self.round_seed, self.client_id, sender)
            plaintext = masks.decrypt(key, message, _route(sender, self.client_id, self.round_seed))
            half = len(plaintext) // 2
            self._held[sender] = (Share.from_bytes(plaintext[:half]), Share.from_bytes(plaintext[half:]))

    def mask(self, x: torch.Tensor, peer_public_keys: Mapping[int, PublicKeys]) -> torch.Tensor:
        """Round 2: y_u (int64 residues) for the 1-D float update x.

        peer_public_keys: every client that completed round 1 (the same set for all clients)."""
        if torch.is_tensor(x) and x.dim() != 1:
            raise FastlmError(f"secure aggregation: an update is a 1-D tensor, got shape {tuple(x.shape)}")
        if self._masked:
            raise FastlmError(f"secure aggregation: client {self.client_id} already sent its masked input this round "
                              "(a second one under the same masks would reveal the difference)")
        changed = [v for v, keys in peer_public_keys.items() if self._peers and self._peers.get(v) != keys]
        if changed:
            raise FastlmError(f"secure aggregation: client {self.client_id} got keys of clients {sorted(changed)} "
                              "that differ from those it shared with")
        fp = self.fixed_point
        n_clients = len(set(peer_public_keys) | {self.client_id})
        encoded = fp.encode(x, n_clients=n_clients)
        add, subtract = [_self_mask_key(self._seed, self.round_seed, self.client_id)], []
        for v in sorted(peer_public_keys):
            if v != self.client_id:
                key = _pairwise_key(self._mask, peer_public_keys[v].mask_key, self.round_seed, self.client_id, v)
                (add if v > self.client_id else subtract).append(key)
        self._masked = True
        return masks.apply_masks(encoded, add, subtract, fp.modulus_bits)

    def reveal(self, survivors: Iterable[int], dropped: Iterable[int]) -> dict[int, tuple[str, Share]]:
        """Round 3: shares of b_v for each survivor v and of s_v's key for each dropped v (v -> (kind, share)).

        Refuses to reveal both secrets of one client: with both, the server could unmask that client's y."""
        survivors, dropped = set(survivors), set(dropped)
        if survivors & dropped:
            raise FastlmError(f"secure aggregation: clients {sorted(survivors & dropped)} named both survivor and dropped")
        if len(survivors) < self._threshold:
            raise _discard(f"client {self.client_id} was told of {len(survivors)} survivors, threshold {self._threshold}")
        wanted = {v: SELF_MASK for v in survivors} | {v: MASK_KEY for v in dropped}
        for v, kind in wanted.items():
            if self._revealed.get(v, kind) != kind:
                raise FastlmError(f"secure aggregation: client {self.client_id} refuses to reveal both secrets of "
                                  f"client {v}")
            if v not in self._held:
                raise FastlmError(f"secure aggregation: client {self.client_id} holds no shares of client {v}")
        self._revealed.update(wanted)
        return {v: (kind, self._held[v][0 if kind == MASK_KEY else 1]) for v, kind in wanted.items()}


def sum_masked(masked: Iterable[torch.Tensor], fixed_point: FixedPoint) -> torch.Tensor:
    """The server's sum of the masked inputs (int64 residues), mod 2**k."""
    total = None
    for y in masked:
        if not torch.is_tensor(y) or y.dtype != torch.int64 or (total is not None and y.shape != total.shape):
            raise FastlmError("secure aggregation: masked inputs must be int64 tensors of one shape, got "
                              f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
        words = y.detach().cpu().contiguous().numpy().view(np.uint64)
        if total is None:
            total = words.copy()
        else:
            np.add(total, words, out=total)   # wraps mod 2**64, a multiple of the modulus
    if total is None:
        raise FastlmError("secure aggregation: no masked input to sum")
    np.bitwise_and(total, np.uint64(fixed_point.residue_mask), out=total)
    return torch.from_numpy(total.view(np.int64))


def reconstruct_secrets(reveals: Mapping[int, Mapping[int, tuple[str, Share]]], survivors: Iterable[int],
                        dropped: Iterable[int], public_keys: Mapping[int, PublicKeys], threshold: int,
                        round_seed: bytes) -> RecoveredSecrets:
    """Round 3, server: b_u of the survivors and s_u's private key of the dropped, from t answers each,
    each checked against what u published in round 0 (RoundDiscarded if anything is missing or wrong)."""
    if len(reveals) < threshold:
        raise _discard(f"{len(reveals)} clients answered the unmasking request, threshold {threshold}")

    def rebuild(u: int, kind: str) -> bytes:
        shares = [answer[u][1] for answer in reveals.values() if answer.get(u, ("", None))[0] == kind]
        try:
            return reconstruct(shares, threshold)
        except FastlmError as e:
            raise _discard(f"cannot rebuild a secret of client {u}: {e}") from None

    seeds, keys = {}, {}
    for u in sorted(survivors):
        seeds[u] = rebuild(u, SELF_MASK)
        if masks.self_mask_commitment(seeds[u], round_seed, u) != public_keys[u].self_mask_commitment:
            raise _discard(f"the rebuilt self-mask seed of client {u} does not match its commitment")
    for u in sorted(dropped):
        keys[u] = rebuild(u, MASK_KEY)
        if masks.public_bytes(X25519PrivateKey.from_private_bytes(keys[u])) != public_keys[u].mask_key:
            raise _discard(f"the rebuilt mask key of dropped client {u} does not match its public key")
    return RecoveredSecrets(seeds, keys)


def unmask(sum_of_masked: torch.Tensor, survivors: Iterable[int], recovered: RecoveredSecrets,
           public_keys: Mapping[int, PublicKeys], round_seed: bytes, fixed_point: FixedPoint) -> torch.Tensor:
    """Round 3, server: the sum of the survivors' updates (float64) from the sum of their masked inputs."""
    survivors = sorted(survivors)
    add, subtract = [], []
    for u, private in sorted(recovered.mask_private_keys.items()):
        for v in survivors:   # y_v holds +PRG(s_uv) if u > v, else -PRG(s_uv): take it back out
            key = _pairwise_key(private, public_keys[v].mask_key, round_seed, u, v)
            (subtract if u > v else add).append(key)
    subtract += [_self_mask_key(recovered.self_mask_seeds[u], round_seed, u) for u in survivors]
    return fixed_point.decode(masks.apply_masks(sum_of_masked, add, subtract, fixed_point.modulus_bits))


@dataclass
class AggregateResult:
    """One simulated round: the sum and what it cost."""
    sum: torch.Tensor                    # float64: sum of the survivors' updates
    masked: dict[int, torch.Tensor]      # what the server received from each survivor (int64 residues)
    survivors: list[int]
    dropped: list[int]
    bytes_sent: int                      # every message payload, both directions (keys, shares, masked inputs)
    plain_bytes: int                     # plain aggregation: numel * 4 bytes (float32) per survivor
    bytes_by_round: dict[str, int] = field(default_factory=dict)


class SecureAggregator:
    """Simulates one Bonawitz round in one process: every client's ClientMasker and the server.

    threshold: how many clients must survive (and answer) for the sum to be computed. Bonawitz et al.
    take t > n/2: with less, a server that lies about who dropped could collect both secrets of a
    client from two disjoint groups of clients."""

    def __init__(self, client_ids: list[int], threshold: int, fixed_point: FixedPoint, round_seed: bytes):
        ids = [_check_id(i) for i in client_ids]
        if len(set(ids)) != len(ids):
            raise FastlmError(f"secure aggregation: duplicate client ids in {sorted(ids)}")
        if len(ids) < 2:
            raise FastlmError(f"secure aggregation needs at least 2 clients, got {len(ids)}")
        if not isinstance(fixed_point, FixedPoint):
            raise FastlmError(f"secure aggregation: fixed_point must be a FixedPoint, got {type(fixed_point).__name__}")
        self.client_ids = sorted(ids)
        self.threshold = _check_threshold(threshold, len(ids))
        self.fixed_point = fixed_point
        self.round_seed = _check_round_seed(round_seed)

    def aggregate(self, updates: Mapping[int, torch.Tensor], dropped_after_masking: Iterable[int] = frozenset(),
                  dropped_before_unmasking: Iterable[int] = frozenset()) -> AggregateResult:
        """The sum of the surviving clients' 1-D float updates, computed by the protocol.

        dropped_after_masking: clients that completed round 1 (shares sent, so the others masked
        against them) whose masked input never reached the server; their updates may be absent.
        dropped_before_unmasking: survivors whose masked input arrived (they are in the sum) but who
        do not answer the unmasking request. RoundDiscarded when fewer than threshold remain."""
        dropped = set(dropped_after_masking)
        silent = set(dropped_before_unmasking)
        everyone = set(self.client_ids)
        if not dropped <= everyone or not silent <= everyone:
            raise FastlmError(f"secure aggregation: dropped clients {sorted((dropped | silent) - everyone)} "
                              "are not in this round")
        survivors = sorted(everyone - dropped)
        unknown = set(updates) - everyone
        if unknown:
            raise FastlmError(f"secure aggregation: updates from clients {sorted(unknown)} not in this round")
        missing = [u for u in survivors if u not in updates]
        if missing:
            raise FastlmError(f"secure aggregation: no update from surviving clients {missing}")
        shapes = {tuple(updates[u].shape) for u in survivors}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise FastlmError(f"secure aggregation: updates must be 1-D of one size, got shapes {sorted(shapes)}")
        numel = next(iter(shapes))[0]
        sent: dict[str, int] = {}

        # Round 0: advertise keys; the server forwards every client's keys to every client.
        clients = {u: ClientMasker(u, self.round_seed, self.fixed_point) for u in self.client_ids}
        keys = {u: c.public_keys() for u, c in clients.items()}
        key_bytes = sum(k.nbytes for k in keys.values())
        sent["advertise_keys"] = key_bytes + len(clients) * key_bytes

        # Round 1: shares, encrypted client to client, relayed by the server (recipient / sender id added).
        inbox: dict[int, dict[int, bytes]] = {u: {} for u in clients}
        for u, c in clients.items():
            for v, message in c.shares_for(keys, self.threshold).items():
                inbox[v][u] = message
        for v, messages in inbox.items():
            clients[v].receive_shares(messages)
        sent["share_keys"] = 2 * sum(ID_BYTES + len(m) for messages in inbox.values() for m in messages.values())

        # Round 2: masked inputs; only the survivors' arrive.
        if len(survivors) < self.threshold:
            raise _discard(f"{len(survivors)} of {len(clients)} clients sent masked inputs, threshold {self.threshold}")
        masked = {u: clients[u].mask(updates[u], keys) for u in survivors}
        sent["masked_input"] = len(survivors) * (ID_BYTES + 8 * numel)

        # Round 3: unmasking; the server names survivors and dropped, the responsive survivors answer.
        total = sum_masked(masked.values(), self.fixed_point)
        responders = [v for v in survivors if v not in silent]
        reveals = {v: clients[v].reveal(survivors, dropped) for v in responders}
        sent["unmasking"] = (len(survivors) * ID_BYTES * len(clients)  # the lists of survivors and dropped
                             + sum(ID_BYTES + 1 + len(share.to_bytes()) for answer in reveals.values()
                                   for _, share in answer.values()))
        recovered = reconstruct_secrets(reveals, survivors, dropped, keys, self.threshold, self.round_seed)
        result = unmask(total, survivors, recovered, keys, self.round_seed, self.fixed_point)
        return AggregateResult(sum=result, masked=masked, survivors=survivors, dropped=sorted(dropped),
                               bytes_sent=sum(sent.values()), plain_bytes=4 * numel * len(survivors),
                               bytes_by_round=sent)
