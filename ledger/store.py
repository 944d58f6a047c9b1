"""Set-based reads and writes of one batch for the shard writer.

A miss is read by ONE call (``gw_load_batch``: accounts created where missing, prior outcomes, bets,
tombstones, rounds, limits, usage and new transaction numbers), only for the keys the writer's hot
state lacks (``load_into``). A warm batch whose only misses are its own new keys (new transaction ids,
a bet's own id and round) skips even that: the keys are presumed absent and the write proves it, failing
where one exists (``presumable``), after which the writer loads them and decides the batch again.
The batch is written by ONE statement, so one atomic transaction (``write_statement``: every row as
typed arrays through ``unnest``, each house and cash balance updated once with the batch's summed delta,
the batch's events as one outbox row, the outbox cursor moved to the writer's published watermark, the
hash-chain link last). At most two round trips per batch whatever its size (one when warm), which is
what makes group commit pay.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import orjson

from core.commands import Command, Kind, Status
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
)

_LOAD = "SELECT gw_load_batch($1::jsonb, $2, $3, $4)"
#: the miss load of a warm writer: the same answers as gw_load_batch for transactions, bets, tombstones
#: and rounds (no accounts to create, no limits or usage), from typed arrays
_LOAD_KEYS = """
WITH tk AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS k(b, p, x)),
     bk AS (SELECT * FROM unnest($4::text[], $5::text[], $6::text[]) AS k(b, p, x)),
     rk AS (SELECT * FROM unnest($7::text[], $8::text[], $9::text[], $10::text[]) AS k(b, p, x, u)),
     fb AS (SELECT t.* FROM bk JOIN bets t ON t.brand_id = bk.b AND t.provider_id = bk.p AND t.tx_id = bk.x)
SELECT json_build_object(
    'txs', (SELECT json_agg(json_build_array(t.brand_id, t.provider_id, t.tx_id, t.ledger_tx, t.status,
                                             t.request_hash, t.player_id, t.currency, t.cmd_id))
              FROM tk JOIN transactions t ON t.brand_id = tk.b AND t.provider_id = tk.p AND t.tx_id = tk.x),
    'bets', (SELECT json_agg(json_build_array(t.brand_id, t.provider_id, t.tx_id, t.round_id, t.player_id,
                                              t.currency, t.amount, t.free_round, t.state, t.ledger_tx)) FROM fb t),
    'tombstones', (SELECT json_agg(json_build_array(t.brand_id, t.provider_id, t.tx_id))
                     FROM bk JOIN tombstones t ON t.brand_id = bk.b AND t.provider_id = bk.p AND t.tx_id = bk.x),
    'rounds', (SELECT json_agg(json_build_array(r.brand_id, r.provider_id, r.round_id, r.player_id, r.currency,
                                                r.bet_count, r.open_bets, r.live_bets, r.bet_total, r.win_total,
                                                r.closed))
                 FROM (SELECT b, p, x, u FROM rk
                       UNION SELECT brand_id, provider_id, round_id, player_id FROM fb) k
                 JOIN rounds r ON r.brand_id = k.b AND r.provider_id = k.p AND r.round_id = k.x AND r.player_id = k.u),
    'ids', (SELECT json_agg(nextval('ledger_tx_seq') * 1024 + $12::integer) FROM generate_series(1, $11::integer))
)
"""
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


def presumable(cmds: Sequence[Command], missing: BatchKeys) -> bool:
    """Whether a warm writer may skip the load and presume ``missing`` absent: only when every missing
    key is a batch's own new key (any command's transaction key; a bet's own bet and round key), which
    the write then proves absent (``write_statement``'s guard) or fails. Accounts, limits and usage, a bet a win
    or rollback refers to, and the round of anything but a bet are always loaded."""
    if missing.acc or missing.rg:
        return False
    own_bets: set[TxKey] = set()
    own_rounds: set[RoundKey] = set()
    for c in cmds:
        if c.kind is Kind.BET:
            own_bets.add((c.brand_id, c.provider_id, c.tx_id))
            own_rounds.add((c.brand_id, c.provider_id, c.round_id, c.player_id))
    return missing.bet <= own_bets and missing.rnd <= own_rounds


def mark_absent(st: BatchState, keys: BatchKeys) -> None:
    """Record the bet and round ``keys`` not already held as looked up and not there (what a load then
    finds overwrites that; a presumption is proven by the write)."""
    for k in keys.bet:
        st.bets.setdefault(k, None)
    for rk in keys.rnd:
        st.rounds.setdefault(rk, None)


async def load_into(conn: asyncpg.Connection, st: BatchState, keys: BatchKeys, since: dt.date, shard: int,
                    n_ids: int) -> list[int]:
    """Read ``keys`` into ``st`` (creating missing accounts) and draw ``n_ids`` ledger transaction
    numbers (unique across shards). Keys already in ``st`` keep their value: the writer's cache holds
    exactly what it committed, and nobody else writes the shard."""
    if keys.acc or keys.rg:
        doc = {"acc": [(*k, t) for k, t in keys.acc.items()], "tx": list(keys.tx), "bet": list(keys.bet),
               "rnd": list(keys.rnd), "rg": list(keys.rg)}
        raw = await conn.fetchval(_LOAD, orjson.dumps(doc).decode(), since, n_ids, shard)
    else:  # warm: only new transaction, bet and round keys (typed arrays, no plpgsql, no JSON to parse in)
        raw = await conn.fetchval(_LOAD_KEYS, *_columns(list(keys.tx), 3), *_columns(list(keys.bet), 3),
                                  *_columns(list(keys.rnd), 4), n_ids, shard)
    data = orjson.loads(raw)
    for a_id, kind, brand, player, cur, bal in data.get("accounts") or ():
        st.accounts.setdefault((kind, brand, player, cur), Account(a_id, bal, kind == "player"))
    for brand, prov, tx, ltx, status, rhash, player, cur, cmd_id in data["txs"] or ():
        st.txs.setdefault((brand, prov, tx), PriorTx(ltx, Status(status), rhash, player, cur, cmd_id))
    mark_absent(st, keys)
    for brand, prov, tx, rnd, player, cur, amount, free, state, ltx in data["bets"] or ():
        if st.bets.get((brand, prov, tx)) is None:
            st.bets[(brand, prov, tx)] = Bet(rnd, player, cur, amount, free, state, ltx)
    st.tombstones.update((b, p, x) for b, p, x in data["tombstones"] or ())
    for brand, prov, rid, player, cur, count, open_, live, bet_total, win_total, closed in data["rounds"] or ():
        if st.rounds.get((brand, prov, rid, player)) is None:
            st.rounds[(brand, prov, rid, player)] = Round(player, cur, count, open_, live, bet_total, win_total,
                                                          closed)
    for brand, player, cur, key, value, pending, pset, pfrom in data.get("limits") or ():
        st.limits.setdefault((brand, player), {})[(cur, key)] = Limit(value, pending, pset, pfrom)
    for brand, player, cur, day, loss in data.get("usage") or ():
        # the day's loss (stake - win, clamped to int64 by the load): only the difference is ever read
        st.usage[(brand, player, cur, dt.date.fromisoformat(day))] = [loss, 0]
    return list(data["ids"] or ())


async def draw_ids(conn: asyncpg.Connection, shard: int, n_ids: int) -> list[int]:
    """Ledger transaction numbers alone (a warm cache needs nothing else): the same sequence as the load."""
    return list(await conn.fetchval(_IDS, n_ids, shard))


def _outbox_rows(events: list[tuple[str, str, bytes]]) -> tuple[list[str], list[str], list[bytes]]:
    """One outbox row per batch holding all its events as [event id, subject, event] (the row is
    named by its first event): the relay only reads it when the writer could not publish."""
    if not events:
        return [], [], []
    body = orjson.dumps([[event_id, subject, orjson.Fragment(payload)] for event_id, subject, payload in events])
    return [events[0][0]], [events[0][1]], [body]


def _columns(rows: Sequence[Sequence[object]], width: int) -> list[Sequence[object]]:
    """Rows to one array per column (what ``unnest`` takes back apart)."""
    return list(zip(*rows, strict=True)) if rows else [()] * width


# ONE statement, so one atomic transaction and one commit: every table's rows as typed arrays (binary,
# no JSON to build or parse, no plpgsql; the big tables' as arrays of their own row type), each house and
# cash balance updated once with the batch's summed delta (numeric, sent as text: a sum may leave int64),
# the outbox cursor moved to the writer's published watermark, the hash-chain link last. Foreign keys and
# checks fire as for any insert. A part with no rows is left out of the statement (each costs an executor
# node and its arrays even when empty): a few shapes, each prepared once. $1-$7 are the batch's scalars;
# each part's arrays follow in order.
_SCALARS = 7
_PARTS: dict[str, tuple[int, str]] = {
    "t": (1, """t AS (
    INSERT INTO transactions (ledger_tx, brand_id, provider_id, tx_id, kind, status, request_hash, tenant_id,
                              license, player_id, currency, round_id, ref_tx_id, amount, credit_type,
                              batch_seq, traceparent, cmd_id)
    SELECT ledger_tx, brand_id, provider_id, tx_id, kind, status, request_hash, tenant_id, license, player_id,
           currency, round_id, ref_tx_id, amount, credit_type, batch_seq, traceparent, cmd_id
      FROM unnest({}::transactions[])
)"""),
    "e": (1, """e AS (
    INSERT INTO entries (ledger_tx, account_id, amount, batch_seq)
    SELECT ledger_tx, account_id, amount, batch_seq FROM unnest({}::entries[])
)"""),
    "d": (2, """d AS (
    UPDATE balances bl SET balance = bl.balance + d.delta::numeric
      FROM unnest({}::bigint[], {}::text[]) AS d(id, delta) WHERE bl.account_id = d.id
)"""),
    "b": (1, """b AS (
    INSERT INTO bets SELECT * FROM unnest({}::bets[])
    ON CONFLICT (brand_id, provider_id, tx_id) DO UPDATE SET state = EXCLUDED.state
)"""),
    "r": (1, """r AS (
    INSERT INTO rounds SELECT * FROM unnest({}::rounds[])
    ON CONFLICT (brand_id, provider_id, round_id, player_id) DO UPDATE SET
        bet_count = EXCLUDED.bet_count, open_bets = EXCLUDED.open_bets, live_bets = EXCLUDED.live_bets,
        bet_total = EXCLUDED.bet_total, win_total = EXCLUDED.win_total, closed = EXCLUDED.closed
)"""),
    "s": (4, """s AS (
    INSERT INTO tombstones (brand_id, provider_id, tx_id, ledger_tx)
    SELECT * FROM unnest({}::text[], {}::text[], {}::text[], {}::bigint[])
)"""),
    "l": (8, """l AS (
    INSERT INTO rg_limits (brand_id, player_id, currency, key, value, pending_value, pending_set, pending_from_ms)
    SELECT * FROM unnest({}::text[], {}::text[], {}::text[], {}::text[], {}::bigint[], {}::bigint[],
                         {}::boolean[], {}::bigint[])
    ON CONFLICT (brand_id, player_id, currency, key) DO UPDATE SET value = EXCLUDED.value,
        pending_value = EXCLUDED.pending_value, pending_set = EXCLUDED.pending_set,
        pending_from_ms = EXCLUDED.pending_from_ms
)"""),
    "u": (6, """u AS (
    INSERT INTO rg_usage (brand_id, player_id, currency, day, staked, won)
    SELECT u.b, u.p, u.c, u.d, u.s::numeric, u.w::numeric
      FROM unnest({}::text[], {}::text[], {}::text[], {}::date[], {}::text[], {}::text[]) AS u(b, p, c, d, s, w)
    ON CONFLICT (brand_id, player_id, currency, day) DO UPDATE SET
        staked = rg_usage.staked + EXCLUDED.staked, won = rg_usage.won + EXCLUDED.won
)"""),
    "o": (3, """o AS (
    INSERT INTO outbox (event_id, subject, payload, batch_seq)
    SELECT *, $1::bigint FROM unnest({}::text[], {}::text[], {}::bytea[])
    RETURNING seq
)"""),
    # what a warm writer presumed new without loading it (``presumable``): re-inserting a row that does
    # exist violates its own key, so the statement fails and the writer decides the batch again on a load
    # (a presumed transaction key is guarded by the transactions insert itself)
    "g": (3, """g AS (
    INSERT INTO tombstones SELECT t.* FROM unnest({}::text[], {}::text[], {}::text[]) AS k(b, p, x)
      JOIN tombstones t ON t.brand_id = k.b AND t.provider_id = k.p AND t.tx_id = k.x
)"""),
    "gr": (4, """gr AS (
    INSERT INTO rounds SELECT r.* FROM unnest({}::text[], {}::text[], {}::text[], {}::text[]) AS k(b, p, x, u)
      JOIN rounds r ON r.brand_id = k.b AND r.provider_id = k.p AND r.round_id = k.x AND r.player_id = k.u
)"""),
}
# every outbox row in (floor, published] was published by the writer: the cursor moves there once it has
# reached floor (what came before is the relay's to recover), never back; the hash-chain link last
_TAIL = """c AS (
    UPDATE outbox_cursor SET last_seq = $5::bigint
     WHERE id = 1 AND $5::bigint > 0 AND last_seq >= $6::bigint AND last_seq < $5::bigint
), h AS (
    INSERT INTO batches (batch_seq, prev_hash, digest, hash, tx_count) VALUES ($1, $2, $3, $4, $7)
)
SELECT coalesce((SELECT max(seq) FROM o), 0)"""
#: the outbox part is always there (the statement answers its highest seq)
_ALWAYS = frozenset({"t", "o"})
_statements: dict[tuple[str, ...], str] = {}


def write_statement(parts: tuple[str, ...]) -> str:
    """The write statement with ``parts`` (in ``_PARTS`` order), built once per shape."""
    sql = _statements.get(parts)
    if sql is None:
        n = _SCALARS
        ctes = []
        for name in parts:
            width, template = _PARTS[name]
            ctes.append(template.format(*(f"${i}" for i in range(n + 1, n + width + 1))))
            n += width
        sql = _statements[parts] = "WITH " + ",\n".join([*ctes, _TAIL])
    return sql


async def write_mutations(conn: asyncpg.Connection, m: Mutations, batch_seq: int, prev_hash: bytes,
                          digest: bytes, new_hash: bytes, published: int = 0, floor: int = 0,
                          presumed: BatchKeys | None = None) -> int:
    """Write the batch in one statement; the outbox cursor moves to ``published`` (the writer published
    every row after ``floor`` up to it) if it has reached ``floor``; bet and round keys ``presumed`` absent
    make it fail (a unique violation) where they exist. Returns the outbox seq written (0: none)."""
    columns: dict[str, list[Sequence[object]]] = {
        # the big tables' rows go as arrays of their own row type: one value per row for asyncpg to
        # inspect, where an array per column costs an inspection per value (half the encoding's CPU);
        # created_at and entry_id are left to their defaults
        "t": [[(*t, None) for t in m.txs]],
        "e": [[(None, *e, batch_seq) for e in m.entries]],
        "d": [list(m.balance_deltas), [str(v) for v in m.balance_deltas.values()]],
        "b": [[(*k, b.round_id, b.player_id, b.currency, b.amount, b.free_round, b.state, b.ledger_tx)
               for k, b in m.bets.items()]],
        # k: brand, provider, round id, player
        "r": [[(*k, r.currency, r.bet_count, r.open_bets, r.live_bets, r.bet_total, r.win_total, r.closed)
               for k, r in m.rounds.items()]],
        "s": _columns(m.tombstones, 4),
        "l": _columns([(*k, v.value, v.pending_value, v.pending_set, v.pending_from_ms)
                       for k, v in m.limits.items()], 8),
        "u": _columns([(*k, str(v[0]), str(v[1])) for k, v in m.usage_deltas.items()], 6),
        "o": list(_outbox_rows(m.events)),
        "g": _columns(list(presumed.bet) if presumed else [], 3),
        "gr": _columns(list(presumed.rnd) if presumed else [], 4),
    }
    parts = tuple(name for name, cols in columns.items() if name in _ALWAYS or len(cols[0]))
    args = [col for name in parts for col in columns[name]]
    return int(await conn.fetchval(write_statement(parts), batch_seq, prev_hash, digest, new_hash, published, floor,
                                   len(m.txs), *args))
