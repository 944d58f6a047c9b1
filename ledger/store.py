"""Set-based reads and writes of one batch, inside the writer's single PostgreSQL transaction.

The whole batch is read by ONE call (``gw_load_batch``: accounts created where missing, prior
outcomes, bets, tombstones, rounds, limits, usage and the new transaction numbers) and written by ONE
call (``gw_write_batch``: every row as arrays through ``unnest``, each house and cash balance updated
once with the batch's summed delta, the hash-chain link last). Round trips per batch stay at four
(BEGIN, load, write, COMMIT) whatever the batch's size, which is what makes group commit pay.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import asyncpg
import orjson

from core.commands import INT64_MAX, Command, Kind, Status
from ledger.rules import Account, BatchState, Bet, Limit, Mutations, PriorTx, Round, TxKey, window_starts

_LOAD = "SELECT gw_load_batch($1::jsonb, $2, $3, $4)"
_WRITE = "SELECT gw_write_batch($1, $2, $3, $4, $5::jsonb)"


async def load_state(conn: asyncpg.Connection, cmds: Sequence[Command], today: dt.date, shard: int,
                     n_ids: int) -> tuple[BatchState, list[int]]:
    """Everything the batch can touch, and ``n_ids`` ledger transaction numbers (unique across shards)."""
    # accounts: the player's wallet plus the house (game) or cash (deposit/withdraw) counterparty
    want: dict[tuple[str, str, str, str], str] = {}
    bet_keys: set[TxKey] = set()
    for c in cmds:
        if c.kind is Kind.BET:
            bet_keys.add((c.brand_id, c.provider_id, c.tx_id))
        elif c.kind in (Kind.WIN, Kind.ROLLBACK):
            ref = c.ref_tx_id if c.ref_tx_id is not None else (c.tx_id if c.kind is Kind.ROLLBACK else None)
            if ref is not None:
                bet_keys.add((c.brand_id, c.provider_id, ref))
        if c.kind not in (Kind.RG_SET, Kind.END_ROUND):
            want[("player", c.brand_id, c.player_id, c.currency)] = c.tenant_id
            other = "cash" if c.kind in (Kind.DEPOSIT, Kind.WITHDRAW) else "house"
            want[(other, c.brand_id, "", c.currency)] = c.tenant_id
        elif c.kind is Kind.END_ROUND:
            # an end of round moves no money, but its result reports the player's balance
            want[("player", c.brand_id, c.player_id, c.currency)] = c.tenant_id
    # a round is per player: everyone at a live table shares its round id
    round_keys = list({(c.brand_id, c.provider_id, c.round_id, c.player_id) for c in cmds
                       if c.kind is not Kind.RG_SET})
    bets = list(bet_keys)
    keys = {
        "acc": [(*k, t) for k, t in want.items()],
        "tx": list({(c.brand_id, c.provider_id, c.tx_id) for c in cmds}),
        "bet": bets,
        "rnd": round_keys,
        "rg": list({(c.brand_id, c.player_id) for c in cmds if c.kind in (Kind.BET, Kind.RG_SET)}),
    }
    raw = await conn.fetchval(_LOAD, orjson.dumps(keys).decode(), min(window_starts(today).values()), n_ids, shard)
    data = orjson.loads(raw)

    st = BatchState()
    for a_id, kind, brand, player, cur, bal in data["accounts"] or ():
        st.accounts[(kind, brand, player, cur)] = Account(a_id, bal, kind == "player")
    for brand, prov, tx, ltx, status, rhash, player, cur, cmd_id in data["txs"] or ():
        st.txs[(brand, prov, tx)] = PriorTx(ltx, Status(status), rhash, player, cur, cmd_id)
    st.bets = dict.fromkeys(bets)
    for brand, prov, tx, rnd, player, cur, amount, free, state, ltx in data["bets"] or ():
        st.bets[(brand, prov, tx)] = Bet(rnd, player, cur, amount, free, state, ltx)
    st.tombstones = {(b, p, x) for b, p, x in data["tombstones"] or ()}
    st.rounds = dict.fromkeys(round_keys)
    for brand, prov, rid, player, cur, count, open_, live, bet_total, win_total, closed in data["rounds"] or ():
        st.rounds[(brand, prov, rid, player)] = Round(player, cur, count, open_, live, bet_total, win_total, closed)
    for brand, player, cur, key, value, pending, pset, pfrom in data["limits"] or ():
        st.limits.setdefault((brand, player), {})[(cur, key)] = Limit(value, pending, pset, pfrom)
    for brand, player, cur, day, loss in data["usage"] or ():
        # the day's loss (stake - win, clamped to int64 by the load): only the difference is ever read
        st.usage[(brand, player, cur, dt.date.fromisoformat(day))] = [loss, 0]
    return st, list(data["ids"] or ())


def _outbox_rows(events: list[tuple[str, str, bytes]]) -> list[tuple[str, str, str]]:
    """One outbox row per ledger transaction, holding all its events (half the rows of one per event)."""
    rows: list[tuple[str, str, str]] = []
    group: list[bytes] = []
    key = ""
    first_subject = ""
    for event_id, subject, payload in events:
        ltx = event_id.partition(":")[0]
        if ltx != key and group:
            rows.append((key, first_subject, orjson.dumps([orjson.Fragment(g) for g in group]).decode()))
            group = []
        if not group:
            key, first_subject = ltx, subject
        group.append(orjson.dumps([event_id, subject, orjson.Fragment(payload)]))
    if group:
        rows.append((key, first_subject, orjson.dumps([orjson.Fragment(g) for g in group]).decode()))
    return rows


def _wide(value: int) -> int | str:
    """A house or cash sum may leave int64, which JSON numbers (orjson) do not carry: send it as text."""
    return value if -INT64_MAX <= value <= INT64_MAX else str(value)


async def write_mutations(conn: asyncpg.Connection, m: Mutations, batch_seq: int, prev_hash: bytes,
                          digest: bytes, new_hash: bytes) -> None:
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
    await conn.execute(_WRITE, batch_seq, prev_hash, digest, new_hash, orjson.dumps(doc).decode())
