"""Prove the ledger's invariants from the rows themselves.

Checked per shard: every transaction's entries sum to zero; every balance equals the sum of its
account's entries; no player balance is negative; only applied transactions carry entries; no provider
transaction id was applied twice; no wallet holds more than an int64 (house and cash accounts are
unbounded numerics, summed exactly); and the batch hash chain recomputes from the stored rows. Any
failure is reported and makes ``gateway reconcile`` exit non-zero.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from core.commands import INT64_MAX
from ledger import chain
from ledger.sharding import connect

_APPLIED = ("ok",)


@dataclass
class ShardReport:
    shard: int
    transactions: int = 0
    entries: int = 0
    batches: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def reconcile_shard(dsn: str, shard: int) -> ShardReport:
    conn = await connect(dsn, shard)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await _check(conn, shard)
    finally:
        await conn.close()


async def _check(conn: asyncpg.Connection, shard: int) -> ShardReport:
    rep = ShardReport(shard)
    p = rep.problems
    rep.transactions = await conn.fetchval("SELECT count(*) FROM transactions")
    rep.entries = await conn.fetchval("SELECT count(*) FROM entries")
    rep.batches = await conn.fetchval("SELECT count(*) FROM batches")

    for r in await conn.fetch("SELECT ledger_tx, sum(amount) AS s FROM entries GROUP BY ledger_tx "
                              "HAVING sum(amount) <> 0 LIMIT 20"):
        p.append(f"transaction {r['ledger_tx']}: entries sum to {r['s']}, not 0")
    for r in await conn.fetch(
        """SELECT b.account_id, b.balance, coalesce(e.s, 0) AS s FROM balances b
             LEFT JOIN (SELECT account_id, sum(amount) AS s FROM entries GROUP BY account_id) e USING (account_id)
            WHERE b.balance <> coalesce(e.s, 0) LIMIT 20"""):
        p.append(f"account {r['account_id']}: balance {r['balance']} but entries sum to {r['s']}")
    for r in await conn.fetch("SELECT account_id, balance FROM balances WHERE is_player AND balance < 0 LIMIT 20"):
        p.append(f"account {r['account_id']}: negative player balance {r['balance']}")
    # house and cash balances are unbounded; a wallet is int64 (what every protocol can be answered with)
    for r in await conn.fetch("SELECT account_id, balance FROM balances WHERE is_player AND balance > $1 LIMIT 20",
                              INT64_MAX):
        p.append(f"account {r['account_id']}: player balance {r['balance']} exceeds int64")
    for r in await conn.fetch(
        """SELECT DISTINCT t.ledger_tx, t.status FROM entries e JOIN transactions t USING (ledger_tx)
            WHERE t.status <> ALL($1::text[]) LIMIT 20""", list(_APPLIED)):
        p.append(f"transaction {r['ledger_tx']} has entries but status {r['status']}")
    for r in await conn.fetch(
        """SELECT brand_id, provider_id, tx_id, count(*) AS n FROM transactions
            GROUP BY brand_id, provider_id, tx_id HAVING count(*) > 1 LIMIT 20"""):
        p.append(f"provider tx {r['brand_id']}/{r['provider_id']}/{r['tx_id']} recorded {r['n']} times")
    for r in await conn.fetch(
        """SELECT count(*) AS n FROM entries e LEFT JOIN transactions t USING (ledger_tx)
            WHERE t.ledger_tx IS NULL HAVING count(*) > 0"""):
        p.append(f"{r['n']} entries belong to no transaction")
    await _check_chain(conn, p)
    return rep


async def _check_chain(conn: asyncpg.Connection, problems: list[str]) -> None:
    txs: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for r in await conn.fetch(
        """SELECT batch_seq, ledger_tx, brand_id, provider_id, tx_id, kind, status, request_hash, player_id,
                  currency, round_id, ref_tx_id, amount FROM transactions"""):
        txs[r["batch_seq"]].append((r["ledger_tx"], r["brand_id"], r["provider_id"], r["tx_id"], r["kind"],
                                    r["status"], r["request_hash"], r["player_id"], r["currency"].strip(),
                                    r["round_id"], r["ref_tx_id"], r["amount"]))
    entries: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for r in await conn.fetch("SELECT batch_seq, ledger_tx, account_id, amount FROM entries"):
        entries[r["batch_seq"]].append((r["ledger_tx"], r["account_id"], r["amount"]))
    prev = chain.GENESIS
    expected_seq = 1
    seen: set[int] = set()
    for b in await conn.fetch("SELECT batch_seq, prev_hash, digest, hash, tx_count FROM batches ORDER BY batch_seq"):
        seq = b["batch_seq"]
        seen.add(seq)
        if seq != expected_seq:
            problems.append(f"hash chain: batch {expected_seq} missing (next is {seq})")
        expected_seq = seq + 1
        if bytes(b["prev_hash"]) != prev:
            problems.append(f"hash chain: batch {seq} does not link to its predecessor")
        digest = chain.batch_digest(txs.get(seq, []), entries.get(seq, []))
        if digest != bytes(b["digest"]):
            problems.append(f"hash chain: rows of batch {seq} do not match its digest (tampered)")
        if chain.chain_hash(bytes(b["prev_hash"]), seq, bytes(b["digest"])) != bytes(b["hash"]):
            problems.append(f"hash chain: batch {seq} hash is wrong")
        if len(txs.get(seq, [])) != b["tx_count"]:
            problems.append(f"hash chain: batch {seq} holds {len(txs.get(seq, []))} transactions, "
                            f"recorded {b['tx_count']}")
        prev = bytes(b["hash"])
    orphans = (set(txs) | set(entries)) - seen
    if orphans:
        problems.append(f"rows outside the hash chain in batch(es) {sorted(orphans)[:5]}")


async def reconcile(dsns: dict[int, str]) -> list[ShardReport]:
    return [await reconcile_shard(dsn, shard) for shard, dsn in sorted(dsns.items())]


def format_reports(reports: list[ShardReport]) -> str:
    lines = []
    for r in reports:
        state = "OK" if r.ok else f"FAILED ({len(r.problems)} problem(s))"
        lines.append(f"shard {r.shard}: {r.transactions} transactions, {r.entries} entries, "
                     f"{r.batches} batches: {state}")
        lines.extend(f"  - {p}" for p in r.problems)
    return "\n".join(lines)
