"""Reconcile what the load was told against what the ledger holds: nothing lost, nothing doubled.

From the journals (``loadtests/journal.py``):

1. every call that never got a definitive answer is re-sent, unchanged, until it gets one;
2. every answer to the same transaction must agree (a retry never turns a refusal into a success);
3. every call answered with a success is in the ledger exactly once and moved exactly its amount on the
   player's wallet; every refused call moved nothing (read-only SQL on each shard);
4. every player's balance, through the operator API and in the ledger, equals the sum the answers imply;
5. ``gateway reconcile`` (every ledger invariant and the hash chains) is clean;
6. the websocket watchers (``loadtests/watch.py``) saw every round's final balance pushed within the bound,
   with ``seq`` gap-free and pushes in commit order.

Any difference is a problem; ``CheckResult.ok`` is false when there is one.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from core.money import to_minor
from ledger.reconcile import format_reports, reconcile
from ledger.sharding import connect
from loadtests.journal import Answer, classify, read_journals
from loadtests.watch import summarize

Key = tuple[str, str, str]  # (brand, provider, tx)
Wallet = tuple[str, str, str]  # (brand, player, currency)

_LEDGER_ROWS = """
WITH k AS (SELECT * FROM unnest($2::text[], $3::text[]) AS k(provider_id, tx_id)),
     t AS (SELECT t.ledger_tx, t.provider_id, t.tx_id, t.status FROM transactions t
             JOIN k USING (provider_id, tx_id) WHERE t.brand_id = $1)
SELECT t.provider_id, t.tx_id, t.status, coalesce(sum(e.amount) FILTER (WHERE a.kind = 'player'), 0) AS delta
  FROM t LEFT JOIN entries e ON e.ledger_tx = t.ledger_tx LEFT JOIN accounts a ON a.account_id = e.account_id
 GROUP BY t.provider_id, t.tx_id, t.status"""


@dataclass
class CheckResult:
    calls: int = 0
    answers: int = 0
    succeeded: int = 0
    refused: int = 0
    resent_unknown: int = 0
    wallets: int = 0
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    ledger_checked: bool = False
    reconcile_report: str = ""
    #: the websocket watchers' counts (``loadtests.watch.summarize``; empty when none ran)
    ws: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "calls": self.calls, "answers": self.answers, "succeeded": self.succeeded,
                "refused": self.refused, "resent_unknown": self.resent_unknown, "wallets": self.wallets,
                "by_kind": self.by_kind, "ledger_checked": self.ledger_checked,
                "reconcile": self.reconcile_report, "websocket": self.ws, "problems": self.problems}


async def _resend(http: aiohttp.ClientSession, base: str, rec: dict[str, Any], deadline: float) -> tuple[bool, str]:
    """Send one journalled call again until it is definitive (or the deadline passes: ``RETRY``)."""
    while True:
        try:
            async with http.post(base + rec["path"], data=rec["body"].encode(), headers=rec["headers"]) as resp:
                answer, code = classify(rec["proto"], resp.status, await resp.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            answer, code = Answer.RETRY, type(exc).__name__
        if answer is not Answer.RETRY:
            return answer is Answer.OK, code
        if time.monotonic() > deadline:
            raise TimeoutError(code)
        await asyncio.sleep(random.uniform(0.1, 0.5))


async def check(journal_dir: str, base_url: str, operator_key: str, dsns: dict[int, str] | None, *,
                full_reconcile: bool = True, resend_for_s: float = 120.0) -> CheckResult:
    res = CheckResult()
    records = read_journals(journal_dir)
    sent = {r["id"]: r for r in records if r["e"] == "s"}
    answers: defaultdict[str, list[bool]] = defaultdict(list)
    for r in records:
        if r["e"] == "d":
            answers[r["id"]].append(bool(r["ok"]))
    res.calls = len(sent)
    res.ws = summarize(journal_dir)
    res.problems += res.ws.get("problems", [])
    if res.ws and (res.ws["mismatches"] or res.ws["order_errors"]) and not res.ws["problems"]:
        res.problems.append("websocket: balance mismatches or pushes out of order")  # details not kept
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        deadline = time.monotonic() + resend_for_s
        for rec_id, rec in sent.items():  # journal order: a bet is re-sent before its win
            if answers[rec_id]:
                continue
            res.resent_unknown += 1
            try:
                ok, _ = await _resend(http, base_url, rec, deadline)
            except TimeoutError as exc:
                res.problems.append(f"{rec['provider']}/{rec['tx']}: still no definitive answer ({exc})")
                continue
            answers[rec_id].append(ok)

        # one outcome per ledger key, every answer to it agreeing
        outcome: dict[Key, bool] = {}
        meta: dict[Key, dict[str, Any]] = {}
        for rec_id, rec in sent.items():
            key = (rec["brand"], rec["provider"], rec["tx"])
            meta.setdefault(key, rec)
            for ok in answers[rec_id]:
                res.answers += 1
                if outcome.setdefault(key, ok) != ok:
                    res.problems.append(f"{key[1]}/{key[2]}: answered both success and refusal")
        expected_delta: dict[Key, int] = {}
        expected_balance: defaultdict[Wallet, int] = defaultdict(int)
        for key, ok in outcome.items():
            rec = meta[key]
            kinds = res.by_kind.setdefault(f"{rec['proto']} {rec['kind']}", {"ok": 0, "refused": 0})
            kinds["ok" if ok else "refused"] += 1
            res.succeeded += ok
            res.refused += not ok
            delta = 0
            if ok and rec["kind"] == "bet":
                delta = -rec["amount"]
            elif ok and rec["kind"] in ("win", "deposit"):
                delta = rec["amount"]
            elif ok and rec["kind"] == "rollback":
                bet_key = (key[0], key[1], rec["ref"])
                delta = meta[bet_key]["amount"] if outcome.get(bet_key) else 0
            expected_delta[key] = delta
            expected_balance[(rec["brand"], rec["player"], rec["cur"])] += delta
        res.wallets = len(expected_balance)

        # balances through the operator API
        auth = {"Authorization": f"Bearer {operator_key}"}
        for (brand, player, cur), want in expected_balance.items():
            params = {"brand_id": brand, "player_id": player, "currency": cur}
            async with http.get(base_url + "/v1/wallet/balance", params=params, headers=auth) as resp:
                body = await resp.json()
            got = to_minor(str(body.get("balance")), cur) if resp.status == 200 else None
            if got != want:
                res.problems.append(f"wallet {brand}/{player}: balance API says {got}, answers imply {want}")

    if dsns:
        res.ledger_checked = True
        await _check_ledger(dsns, outcome, expected_delta, expected_balance, res)
        if full_reconcile:
            reports = await reconcile(dsns)
            res.reconcile_report = format_reports(reports)
            res.problems += [f"reconcile shard {r.shard}: {p}" for r in reports for p in r.problems]
    return res


async def _check_ledger(dsns: dict[int, str], outcome: dict[Key, bool], expected_delta: dict[Key, int],
                        expected_balance: dict[Wallet, int], res: CheckResult) -> None:
    by_brand: defaultdict[str, list[Key]] = defaultdict(list)
    for key in outcome:
        by_brand[key[0]].append(key)
    found: defaultdict[Key, list[tuple[str, int]]] = defaultdict(list)
    balances: defaultdict[Wallet, int] = defaultdict(int)
    for shard, dsn in sorted(dsns.items()):
        conn = await connect(dsn, shard)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                for brand, keys in by_brand.items():
                    for r in await conn.fetch(_LEDGER_ROWS, brand, [k[1] for k in keys], [k[2] for k in keys]):
                        found[(brand, r["provider_id"], r["tx_id"])].append((r["status"], int(r["delta"])))
                rows = await conn.fetch(
                    """SELECT a.brand_id, a.player_id, a.currency, b.balance FROM accounts a JOIN balances b
                         USING (account_id) WHERE a.kind = 'player' AND a.player_id = ANY($1::text[])""",
                    sorted({w[1] for w in expected_balance}))
                for r in rows:
                    balances[(r["brand_id"], r["player_id"], r["currency"].strip())] += int(r["balance"])
        finally:
            await conn.close()
    for key, ok in outcome.items():
        rows = found.get(key, [])
        if len(rows) > 1:
            res.problems.append(f"{key[1]}/{key[2]}: in the ledger {len(rows)} times (double)")
        moved = sum(d for _, d in rows)
        if ok and not rows:
            res.problems.append(f"{key[1]}/{key[2]}: answered success but not in the ledger (lost)")
        elif moved != expected_delta[key]:
            what = "success" if ok else "refusal"
            res.problems.append(f"{key[1]}/{key[2]}: answered {what}, ledger moved {moved}, "
                                f"expected {expected_delta[key]}")
    for wallet, want in expected_balance.items():
        if balances.get(wallet, 0) != want:
            res.problems.append(f"wallet {wallet[0]}/{wallet[1]}: ledger balance {balances.get(wallet, 0)}, "
                                f"answers imply {want}")
