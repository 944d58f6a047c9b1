"""Set-based reads and writes of one batch, inside the writer's single PostgreSQL transaction.

The whole batch is read by ONE call (``gw_load_batch``: accounts created where missing, prior
outcomes, bets, tombstones, rounds, limits, usage and the new transaction numbers) and written by ONE
call (``gw_write_batch``: every row as arrays through ``unnest``, each house and cash balance updated
once with the batch's summed delta, the batch's events as one outbox row, the outbox cursor moved to
the writer's published watermark, the hash-chain link last). With the writer's hot state warm only the
keys it lacks are loaded (``load_into``), often none. Round trips per batch stay at four
(BEGIN, load, write, COMMIT) whatever the batch's size, which is what makes group commit pay.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import orjson

from ledger.commands import INT64_MAX, Command, Kind, Status
from ledger.rules import (
    Account,
    AccountKey,
    BatchState,
    Bet,
    Limit,
    Mutations,
    PriorTx,
    Round,
    RoundKey,
    TxKey,
    window_starts,
)

_LOAD = "SELECT gw_load_batch($1::jsonb, $2, $3, $4)"
_WRITE = "SELECT gw_write_batch($1, $2, $3, $4, $5::jsonb, $6, $7)"
_IDS = "SELECT array_agg(nextval('ledger_tx_seq') * 1024 + $2) FROM generate_series(1, $1::integer)"


@dataclass(slots=True)
class BatchKeys:
    """The state one batch can touch, by kind of key (what the load reads, or the cache must hold)."""

    acc: dict[AccountKey, str] = field(default_factory=dict)  # key → tenant (to create it where missing)
    tx: set[TxKey] = field(default_factory=set)
    bet: set[TxKey] = field(default_factory=set)
    rnd: set[RoundKey] = field(default_factory=set)
    rg: set[tuple[str, str]] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.acc or self.tx or self.bet or self.rnd or self.rg)


def batch_keys(cmds: Sequence[Command]) -> BatchKeys:
    keys = BatchKeys()
    # accounts: the player's wallet plus the house (game) or cash (deposit/withdraw) counterparty
    want = keys.acc
    for c in cmds:
        keys.tx.add((c.brand_id, c.provider_id, c.tx_id))
        if c.kind is Kind.BET:
            keys.bet.add((c.brand_id, c.provider_id, c.tx_id))
        elif c.kind in (Kind.WIN, Kind.ROLLBACK):
            ref = c.ref_tx_id if c.ref_tx_id is not None else (c.tx_id if c.kind is Kind.ROLLBACK else None)
            if ref is not None:
                keys.bet.add((c.brand_id, c.provider_id, ref))
        if c.kind not in (Kind.RG_SET, Kind.END_ROUND):
            want[("player", c.brand_id, c.player_id, c.currency)] = c.tenant_id
            other = "cash" if c.kind in (Kind.DEPOSIT, Kind.WITHDRAW) else "house"
            want[(other, c.brand_id, "", c.currency)] = c.tenant_id
        elif c.kind is Kind.END_ROUND:
            # an end of round moves no money, but its result reports the player's balance
            want[("player", c.brand_id, c.player_id, c.currency)] = c.tenant_id
        # a round is per player: everyone at a live table shares its round id
        if c.kind is not Kind.RG_SET:
            keys.rnd.add((c.brand_id, c.provider_id, c.round_id, c.player_id))
        if c.kind in (Kind.BET, Kind.RG_SET):
            keys.rg.add((c.brand_id, c.player_id))
    return keys


async def load_into(conn: asyncpg.Connection, st: BatchState, keys: BatchKeys, since: dt.date, shard: int,
                    n_ids: int) -> list[int]:
    """Read ``keys`` into ``st`` (creating missing accounts) and draw ``n_ids`` ledger transaction
    numbers (unique across shards). Keys already in ``st`` keep their value: the writer's cache holds
    exactly what it committed, and nobody else writes the shard."""
    doc = {"acc": [(*k, t) for k, t in keys.acc.items()], "tx": list(keys.tx), "bet": list(keys.bet),
           "rnd": list(keys.rnd), "rg": list(keys.rg)}
    raw = await conn.fetchval(_LOAD, orjson.dumps(doc).decode(), since, n_ids, shard)
    data = orjson.loads(raw)
    for a_id, kind, brand, player, cur, bal in data["accounts"] or ():
        st.accounts.setdefault((kind, brand, player, cur), Account(a_id, bal, kind == "player"))
    for brand, prov, tx, ltx, status, rhash, player, cur, cmd_id in data["txs"] or ():
        st.txs.setdefault((brand, prov, tx), PriorTx(ltx, Status(status), rhash, player, cur, cmd_id))
    for k in keys.bet:
        st.bets.setdefault(k, None)
    for brand, prov, tx, rnd, player, cur, amount, free, state, ltx in data["bets"] or ():
        if st.bets.get((brand, prov, tx)) is None:
            st.bets[(brand, prov, tx)] = Bet(rnd, player, cur, amount, free, state, ltx)
    st.tombstones.update((b, p, x) for b, p, x in data["tombstones"] or ())
    for rk in keys.rnd:
        st.rounds.setdefault(rk, None)
    for brand, prov, rid, player, cur, count, open_, live, bet_total, win_total, closed in data["rounds"] or ():
        if st.rounds.get((brand, prov, rid, player)) is None:
            st.rounds[(brand, prov, rid, player)] = Round(player, cur, count, open_, live, bet_total, win_total,
                                                          closed)
    for brand, player, cur, key, value, pending, pset, pfrom in data["limits"] or ():
        st.limits.setdefault((brand, player), {})[(cur, key)] = Limit(value, pending, pset, pfrom)
    for brand, player, cur, day, loss in data["usage"] or ():
        # the day's loss (stake - win, clamped to int64 by the load): only the difference is ever read
        st.usage[(brand, player, cur, dt.date.fromisoformat(day))] = [loss, 0]
    return list(data["ids"] or ())


async def draw_ids(conn: asyncpg.Connection, shard: int, n_ids: int) -> list[int]:
    """Ledger transaction numbers alone (a warm cache needs nothing else): the same sequence as the load."""
    return list(await conn.fetchval(_IDS, n_ids, shard))


async def load_state(conn: asyncpg.Connection, cmds: Sequence[Command], today: dt.date, shard: int,
                     n_ids: int) -> tuple[BatchState, list[int]]:
    """Everything the batch can touch, and ``n_ids`` ledger transaction numbers (no cache)."""
    st = BatchState()
    ids = await load_into(conn, st, batch_keys(cmds), min(window_starts(today).values()), shard, n_ids)
    return st, ids


def _outbox_rows(events: list[tuple[str, str, bytes]]) -> list[tuple[str, str, str]]:
    """One outbox row per batch holding all its events as [event id, subject, event] (the row is
    named by its first event): the relay only reads it when the writer could not publish."""
    if not events:
        return []
    body = orjson.dumps([[event_id, subject, orjson.Fragment(payload)] for event_id, subject, payload in events])
    return [(events[0][0], events[0][1], body.decode())]


def _wide(value: int) -> int | str:
    """A house or cash sum may leave int64, which JSON numbers (orjson) do not carry: send it as text."""
    return value if -INT64_MAX <= value <= INT64_MAX else str(value)


async def write_mutations(conn: asyncpg.Connection, m: Mutations, batch_seq: int, prev_hash: bytes,
                          digest: bytes, new_hash: bytes, published: int = 0, floor: int = 0) -> int:
    """Write the batch in one statement; the outbox cursor moves to ``published`` (the writer published
    every row after ``floor`` up to it) if it has reached ``floor``. Returns the outbox seq written (0: none)."""
    doc = {
        "t": m.txs,
        "e": m.entries,
        "d": [(a, _wide(v)) for a, v in m.balance_deltas.items()],
        "b": [(*k, b.round_id, b.player_id, b.currency, b.amount, b.free_round, b.state, b.ledger_tx)
              for k, b in m.bets.items()],
        "r": [(*k, r.currency, r.bet_count, r.open_bets, r.live_bets, r.bet_total, r.win_total, r.closed)
              for k, r in m.rounds.items()],  # k: brand, provider, round id, player
        "s": m.tombstones,
        "l": [(*k, v.value, v.pending_value, v.pending_set, v.pending_from_ms) for k, v in m.limits.items()],
        "u": [(*k, _wide(v[0]), _wide(v[1])) for k, v in m.usage_deltas.items()],
        "o": _outbox_rows(m.events),
    }
    return int(await conn.fetchval(_WRITE, batch_seq, prev_hash, digest, new_hash, orjson.dumps(doc).decode(),
                                   published, floor))
