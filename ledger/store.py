"""Set-based reads and writes of one batch, inside the writer's single PostgreSQL transaction.

Each query handles the whole batch (``unnest`` of arrays, ``COPY`` for append-only rows): the number
of round trips per batch is constant, not per command, which is what makes group commit pay. House
and cash balances are written once per batch as the sum of their deltas.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg

from ledger.commands import Command, Kind, Status
from ledger.rules import Account, BatchState, Bet, Limit, Mutations, PriorTx, Round, TxKey, window_starts

TX_COLUMNS = (
    "ledger_tx", "brand_id", "provider_id", "tx_id", "kind", "status", "request_hash", "tenant_id", "license",
    "player_id", "currency", "round_id", "ref_tx_id", "amount", "credit_type", "batch_seq", "traceparent",
    "cmd_id",
)


def _cols(rows: Sequence[Sequence[Any]], n: int) -> list[list[Any]]:
    return [[r[i] for r in rows] for i in range(n)]


async def load_state(conn: asyncpg.Connection, cmds: Sequence[Command], today: dt.date) -> BatchState:
    st = BatchState()
    money = [c for c in cmds if c.kind not in (Kind.RG_SET, Kind.END_ROUND)]

    # accounts: the player's wallet plus the house (game) or cash (deposit/withdraw) counterparty
    want: dict[tuple[str, str, str, str], str] = {}
    for c in money:
        want[("player", c.brand_id, c.player_id, c.currency)] = c.tenant_id
        other = "cash" if c.kind in (Kind.DEPOSIT, Kind.WITHDRAW) else "house"
        want[(other, c.brand_id, "", c.currency)] = c.tenant_id
    if want:
        keys = list(want)
        cols = _cols(keys, 4)
        sql = """SELECT a.account_id, a.kind, a.brand_id, a.player_id, a.currency, b.balance
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) w(kind, brand, player, cur)
                   JOIN accounts a ON a.kind = w.kind AND a.brand_id = w.brand AND a.player_id = w.player
                                  AND a.currency = w.cur
                   JOIN balances b USING (account_id)"""
        for r in await conn.fetch(sql, *cols):
            st.accounts[(r["kind"], r["brand_id"], r["player_id"], r["currency"])] = Account(
                r["account_id"], r["balance"], r["kind"] == "player")
        missing = [k for k in keys if k not in st.accounts]
        if missing:
            mcols = _cols(missing, 4)
            tenants = [want[k] for k in missing]
            rows = await conn.fetch(
                """WITH ins AS (
                       INSERT INTO accounts (kind, brand_id, player_id, currency, tenant_id)
                       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                       ON CONFLICT DO NOTHING
                       RETURNING account_id, kind, brand_id, player_id, currency)
                   , bal AS (INSERT INTO balances (account_id, is_player)
                             SELECT account_id, kind = 'player' FROM ins)
                   SELECT * FROM ins""", *mcols, tenants)
            for r in rows:
                st.accounts[(r["kind"], r["brand_id"], r["player_id"], r["currency"])] = Account(
                    r["account_id"], 0, r["kind"] == "player")

    # prior outcomes of these provider transaction ids (duplicates and conflicts)
    tx_keys = list({(c.brand_id, c.provider_id, c.tx_id) for c in cmds})
    for r in await conn.fetch(
        """SELECT t.brand_id, t.provider_id, t.tx_id, t.ledger_tx, t.status, t.request_hash, t.player_id,
                  t.currency, t.cmd_id
             FROM unnest($1::text[], $2::text[], $3::text[]) k(b, p, x)
             JOIN transactions t ON t.brand_id = k.b AND t.provider_id = k.p AND t.tx_id = k.x""",
        *_cols(tx_keys, 3),
    ):
        st.txs[(r["brand_id"], r["provider_id"], r["tx_id"])] = PriorTx(
            r["ledger_tx"], Status(r["status"]), r["request_hash"], r["player_id"], r["currency"].strip(),
            r["cmd_id"])

    # bets referenced by wins and rollbacks, and tombstones for bets and references
    bet_keys: set[TxKey] = set()
    for c in cmds:
        if c.kind is Kind.BET:
            bet_keys.add((c.brand_id, c.provider_id, c.tx_id))
        elif c.kind in (Kind.WIN, Kind.ROLLBACK):
            ref = c.ref_tx_id if c.ref_tx_id is not None else (c.tx_id if c.kind is Kind.ROLLBACK else None)
            if ref is not None:
                bet_keys.add((c.brand_id, c.provider_id, ref))
    round_keys: set[TxKey] = {(c.brand_id, c.provider_id, c.round_id) for c in money}
    round_keys |= {(c.brand_id, c.provider_id, c.round_id) for c in cmds if c.kind is Kind.END_ROUND}
    if bet_keys:
        cols = _cols(list(bet_keys), 3)
        for k in bet_keys:
            st.bets[k] = None
        for r in await conn.fetch(
            """SELECT t.brand_id, t.provider_id, t.tx_id, t.round_id, t.player_id, t.currency, t.amount,
                      t.free_round, t.state, t.ledger_tx
                 FROM unnest($1::text[], $2::text[], $3::text[]) k(b, p, x)
                 JOIN bets t ON t.brand_id = k.b AND t.provider_id = k.p AND t.tx_id = k.x""", *cols,
        ):
            key = (r["brand_id"], r["provider_id"], r["tx_id"])
            st.bets[key] = Bet(r["round_id"], r["player_id"], r["currency"].strip(), r["amount"],
                               r["free_round"], r["state"], r["ledger_tx"])
            round_keys.add((r["brand_id"], r["provider_id"], r["round_id"]))
        for r in await conn.fetch(
            """SELECT t.brand_id, t.provider_id, t.tx_id
                 FROM unnest($1::text[], $2::text[], $3::text[]) k(b, p, x)
                 JOIN tombstones t ON t.brand_id = k.b AND t.provider_id = k.p AND t.tx_id = k.x""", *cols,
        ):
            st.tombstones.add((r["brand_id"], r["provider_id"], r["tx_id"]))
    if round_keys:
        for k in round_keys:
            st.rounds[k] = None
        for r in await conn.fetch(
            """SELECT t.* FROM unnest($1::text[], $2::text[], $3::text[]) k(b, p, x)
                 JOIN rounds t ON t.brand_id = k.b AND t.provider_id = k.p AND t.round_id = k.x""",
            *_cols(list(round_keys), 3),
        ):
            st.rounds[(r["brand_id"], r["provider_id"], r["round_id"])] = Round(
                r["player_id"], r["currency"].strip(), r["bet_count"], r["open_bets"], r["live_bets"],
                r["bet_total"], r["win_total"], r["closed"])

    # responsible gaming: limits of bettors and of players changing limits, usage since the month/week start
    rg_players = list({(c.brand_id, c.player_id) for c in cmds if c.kind in (Kind.BET, Kind.RG_SET)})
    if rg_players:
        cols = _cols(rg_players, 2)
        for r in await conn.fetch(
            """SELECT l.* FROM unnest($1::text[], $2::text[]) k(b, p)
                 JOIN rg_limits l ON l.brand_id = k.b AND l.player_id = k.p""", *cols,
        ):
            st.limits.setdefault((r["brand_id"], r["player_id"]), {})[r["key"]] = Limit(
                r["value"], r["pending_value"], r["pending_set"], r["pending_from_ms"])
        since = min(window_starts(today).values())
        for r in await conn.fetch(
            """SELECT u.* FROM unnest($1::text[], $2::text[]) k(b, p)
                 JOIN rg_usage u ON u.brand_id = k.b AND u.player_id = k.p AND u.day >= $3""", *cols, since,
        ):
            st.usage[(r["brand_id"], r["player_id"], r["currency"].strip(), r["day"])] = [r["staked"], r["won"]]
    return st


async def allocate_tx_ids(conn: asyncpg.Connection, n: int, shard: int) -> list[int]:
    """Ledger transaction numbers, unique across shards (sequence * 1024 + shard)."""
    rows = await conn.fetch("SELECT nextval('ledger_tx_seq') AS v FROM generate_series(1, $1)", n)
    return [r["v"] * 1024 + shard for r in rows]


async def write_mutations(conn: asyncpg.Connection, m: Mutations, batch_seq: int) -> None:
    if m.txs:
        await conn.copy_records_to_table("transactions", records=m.txs, columns=TX_COLUMNS)
    if m.entries:
        await conn.copy_records_to_table(
            "entries", records=[(*e, batch_seq) for e in m.entries],
            columns=("ledger_tx", "account_id", "amount", "batch_seq"))
    if m.balance_deltas:
        ids = list(m.balance_deltas)
        await conn.execute(
            """UPDATE balances b SET balance = b.balance + d.delta
                 FROM unnest($1::bigint[], $2::bigint[]) d(id, delta) WHERE b.account_id = d.id""",
            ids, [m.balance_deltas[i] for i in ids])
    if m.bets:
        items = list(m.bets.items())
        await conn.execute(
            """INSERT INTO bets (brand_id, provider_id, tx_id, round_id, player_id, currency, amount, free_round,
                                 state, ledger_tx)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                    $7::bigint[], $8::boolean[], $9::text[], $10::bigint[])
               ON CONFLICT (brand_id, provider_id, tx_id) DO UPDATE SET state = EXCLUDED.state""",
            [k[0] for k, _ in items], [k[1] for k, _ in items], [k[2] for k, _ in items],
            [b.round_id for _, b in items], [b.player_id for _, b in items], [b.currency for _, b in items],
            [b.amount for _, b in items], [b.free_round for _, b in items], [b.state for _, b in items],
            [b.ledger_tx for _, b in items])
    if m.rounds:
        ritems = list(m.rounds.items())
        await conn.execute(
            """INSERT INTO rounds (brand_id, provider_id, round_id, player_id, currency, bet_count, open_bets,
                                   live_bets, bet_total, win_total, closed)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                                    $7::int[], $8::int[], $9::bigint[], $10::bigint[], $11::boolean[])
               ON CONFLICT (brand_id, provider_id, round_id) DO UPDATE SET
                   bet_count = EXCLUDED.bet_count, open_bets = EXCLUDED.open_bets,
                   live_bets = EXCLUDED.live_bets, bet_total = EXCLUDED.bet_total,
                   win_total = EXCLUDED.win_total, closed = EXCLUDED.closed""",
            [k[0] for k, _ in ritems], [k[1] for k, _ in ritems], [k[2] for k, _ in ritems],
            [r.player_id for _, r in ritems], [r.currency for _, r in ritems], [r.bet_count for _, r in ritems],
            [r.open_bets for _, r in ritems], [r.live_bets for _, r in ritems],
            [r.bet_total for _, r in ritems], [r.win_total for _, r in ritems], [r.closed for _, r in ritems])
    if m.tombstones:
        await conn.copy_records_to_table(
            "tombstones", records=m.tombstones, columns=("brand_id", "provider_id", "tx_id", "ledger_tx"))
    if m.limits:
        litems = list(m.limits.items())
        await conn.execute(
            """INSERT INTO rg_limits (brand_id, player_id, key, value, pending_value, pending_set, pending_from_ms)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                                    $6::boolean[], $7::bigint[])
               ON CONFLICT (brand_id, player_id, key) DO UPDATE SET value = EXCLUDED.value,
                   pending_value = EXCLUDED.pending_value, pending_set = EXCLUDED.pending_set,
                   pending_from_ms = EXCLUDED.pending_from_ms""",
            [k[0] for k, _ in litems], [k[1] for k, _ in litems], [k[2] for k, _ in litems],
            [v.value for _, v in litems], [v.pending_value for _, v in litems],
            [v.pending_set for _, v in litems], [v.pending_from_ms for _, v in litems])
    if m.usage_deltas:
        uitems = list(m.usage_deltas.items())
        await conn.execute(
            """INSERT INTO rg_usage (brand_id, player_id, currency, day, staked, won)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::date[], $5::bigint[], $6::bigint[])
               ON CONFLICT (brand_id, player_id, currency, day) DO UPDATE SET
                   staked = rg_usage.staked + EXCLUDED.staked, won = rg_usage.won + EXCLUDED.won""",
            [k[0] for k, _ in uitems], [k[1] for k, _ in uitems], [k[2] for k, _ in uitems],
            [k[3] for k, _ in uitems], [v[0] for _, v in uitems], [v[1] for _, v in uitems])
    if m.events:
        await conn.copy_records_to_table(
            "outbox", records=[(*e, batch_seq) for e in m.events],
            columns=("event_id", "subject", "payload", "batch_seq"))
