-- Three data-model fixes, for databases that already hold 001 + 002 (and their data):
--
-- 1. House and cash accounts collect every player's money of a brand and currency on the shard, so a
--    bigint there overflows long before any single wallet could, and then refuses the settlements of
--    every other player. Balances become numeric (unbounded); a player's wallet stays an int64
--    (CHECK 0 <= balance <= 2^63-1: the engine refuses a credit that would pass it, the database is the
--    last line). Daily stake/win usage becomes numeric too; gw_load_batch hands the engine each day's
--    loss clamped to int64 (no limit can tell the difference) and never a house or cash balance (the
--    engine only writes their deltas, sent as text when they leave int64).
-- 2. A round's state is per player: live tables share one round id (Evolution game.id) among every
--    player at the table, and each player's bets, wins and end of round are their own.
-- 3. Money limits (loss_day/week/month, max_stake) are per currency; session_minutes and
--    self_exclude_until_ms are not (currency ''). Limits set before this migration had no currency and
--    applied to every currency: they keep currency '' and keep applying to every currency that has no
--    limit of its own, so no player loses a limit by an upgrade (an operator replaces them by setting
--    the limit per currency).

ALTER TABLE balances ALTER COLUMN balance TYPE numeric;
ALTER TABLE balances ADD CONSTRAINT player_balance_fits_int64
    CHECK (NOT is_player OR balance <= 9223372036854775807);

ALTER TABLE rg_usage ALTER COLUMN staked TYPE numeric, ALTER COLUMN won TYPE numeric;

ALTER TABLE rounds DROP CONSTRAINT rounds_pkey;
ALTER TABLE rounds ADD PRIMARY KEY (brand_id, provider_id, round_id, player_id);

ALTER TABLE rg_limits ADD COLUMN currency text NOT NULL DEFAULT '';
ALTER TABLE rg_limits DROP CONSTRAINT rg_limits_pkey;
ALTER TABLE rg_limits ADD PRIMARY KEY (brand_id, player_id, currency, key);

CREATE OR REPLACE FUNCTION gw_load_batch(doc jsonb, since date, n_ids integer, shard integer)
RETURNS json LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
DECLARE
    out json;
BEGIN
    WITH want AS (
        SELECT r->>0 AS k, r->>1 AS b, r->>2 AS p, r->>3 AS c, r->>4 AS t FROM jsonb_array_elements(doc->'acc') r
    ), missing AS (
        SELECT DISTINCT w.k, w.b, w.p, w.c, w.t FROM want w
         WHERE NOT EXISTS (SELECT 1 FROM accounts a
                            WHERE a.kind = w.k AND a.brand_id = w.b AND a.player_id = w.p AND a.currency = w.c)
    ), ins AS (
        INSERT INTO accounts (kind, brand_id, player_id, currency, tenant_id)
        SELECT k, b, p, c, t FROM missing
        ON CONFLICT DO NOTHING
        RETURNING account_id, kind
    )
    INSERT INTO balances (account_id, is_player) SELECT account_id, kind = 'player' FROM ins;

    WITH acc AS (SELECT r->>0 AS k, r->>1 AS b, r->>2 AS p, r->>3 AS c FROM jsonb_array_elements(doc->'acc') r),
         txk AS (SELECT r->>0 AS b, r->>1 AS p, r->>2 AS x FROM jsonb_array_elements(doc->'tx') r),
         betk AS (SELECT r->>0 AS b, r->>1 AS p, r->>2 AS x FROM jsonb_array_elements(doc->'bet') r),
         rndk AS (SELECT r->>0 AS b, r->>1 AS p, r->>2 AS x, r->>3 AS u FROM jsonb_array_elements(doc->'rnd') r),
         rgk AS (SELECT r->>0 AS b, r->>1 AS p FROM jsonb_array_elements(doc->'rg') r),
         found_bets AS (SELECT t.* FROM betk k
                          JOIN bets t ON t.brand_id = k.b AND t.provider_id = k.p AND t.tx_id = k.x)
    SELECT json_build_object(
        -- a house or cash balance is never read by the engine (and may exceed what JSON numbers carry)
        'accounts', (SELECT json_agg(json_build_array(a.account_id, a.kind, a.brand_id, a.player_id,
                                                      a.currency, CASE WHEN b.is_player THEN b.balance ELSE 0 END))
                       FROM acc w
                       JOIN accounts a ON a.kind = w.k AND a.brand_id = w.b AND a.player_id = w.p
                                      AND a.currency = w.c
                       JOIN balances b USING (account_id)),
        'txs', (SELECT json_agg(json_build_array(t.brand_id, t.provider_id, t.tx_id, t.ledger_tx, t.status,
                                                 t.request_hash, t.player_id, t.currency, t.cmd_id))
                  FROM txk k
                  JOIN transactions t ON t.brand_id = k.b AND t.provider_id = k.p AND t.tx_id = k.x),
        'bets', (SELECT json_agg(json_build_array(t.brand_id, t.provider_id, t.tx_id, t.round_id, t.player_id,
                                                  t.currency, t.amount, t.free_round, t.state, t.ledger_tx))
                   FROM found_bets t),
        'tombstones', (SELECT json_agg(json_build_array(t.brand_id, t.provider_id, t.tx_id))
                         FROM betk k
                         JOIN tombstones t ON t.brand_id = k.b AND t.provider_id = k.p AND t.tx_id = k.x),
        'rounds', (SELECT json_agg(json_build_array(r.brand_id, r.provider_id, r.round_id, r.player_id,
                                                    r.currency, r.bet_count, r.open_bets, r.live_bets,
                                                    r.bet_total, r.win_total, r.closed))
                     FROM (SELECT b, p, x, u FROM rndk
                           UNION SELECT brand_id, provider_id, round_id, player_id FROM found_bets) k
                     JOIN rounds r ON r.brand_id = k.b AND r.provider_id = k.p AND r.round_id = k.x
                                  AND r.player_id = k.u),
        'limits', (SELECT json_agg(json_build_array(l.brand_id, l.player_id, l.currency, l.key, l.value,
                                                    l.pending_value, l.pending_set, l.pending_from_ms))
                     FROM rgk k JOIN rg_limits l ON l.brand_id = k.b AND l.player_id = k.p),
        'usage', (SELECT json_agg(json_build_array(u.brand_id, u.player_id, u.currency, u.day::text,
                                                   greatest(least(u.staked - u.won, 9223372036854775807),
                                                            -9223372036854775807)))
                    FROM rgk k
                    JOIN rg_usage u ON u.brand_id = k.b AND u.player_id = k.p AND u.day >= since),
        'ids', (SELECT json_agg(nextval('ledger_tx_seq') * 1024 + shard) FROM generate_series(1, n_ids))
    ) INTO out;
    RETURN out;
END $$;

CREATE OR REPLACE FUNCTION gw_write_batch(p_batch_seq bigint, p_prev_hash bytea, p_digest bytea, p_hash bytea,
                                          doc jsonb)
RETURNS void LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
BEGIN
    INSERT INTO transactions (ledger_tx, brand_id, provider_id, tx_id, kind, status, request_hash, tenant_id,
                              license, player_id, currency, round_id, ref_tx_id, amount, credit_type,
                              batch_seq, traceparent, cmd_id)
    SELECT (r->>0)::bigint, r->>1, r->>2, r->>3, r->>4, r->>5, r->>6, r->>7, r->>8, r->>9, r->>10, r->>11,
           r->>12, (r->>13)::bigint, r->>14, p_batch_seq, r->>16, r->>17
      FROM jsonb_array_elements(doc->'t') r;

    IF jsonb_array_length(doc->'e') > 0 THEN
        INSERT INTO entries (ledger_tx, account_id, amount, batch_seq)
        SELECT (r->>0)::bigint, (r->>1)::bigint, (r->>2)::bigint, p_batch_seq FROM jsonb_array_elements(doc->'e') r;
    END IF;

    -- a house or cash delta may leave int64 (sent as a JSON string then): numeric takes both
    IF jsonb_array_length(doc->'d') > 0 THEN
        UPDATE balances bl SET balance = bl.balance + d.delta
          FROM (SELECT (r->>0)::bigint AS id, (r->>1)::numeric AS delta FROM jsonb_array_elements(doc->'d') r) d
         WHERE bl.account_id = d.id;
    END IF;

    IF jsonb_array_length(doc->'b') > 0 THEN
        INSERT INTO bets (brand_id, provider_id, tx_id, round_id, player_id, currency, amount, free_round, state,
                          ledger_tx)
        SELECT r->>0, r->>1, r->>2, r->>3, r->>4, r->>5, (r->>6)::bigint, (r->>7)::boolean, r->>8, (r->>9)::bigint
          FROM jsonb_array_elements(doc->'b') r
        ON CONFLICT (brand_id, provider_id, tx_id) DO UPDATE SET state = EXCLUDED.state;
    END IF;

    IF jsonb_array_length(doc->'r') > 0 THEN
        INSERT INTO rounds (brand_id, provider_id, round_id, player_id, currency, bet_count, open_bets, live_bets,
                            bet_total, win_total, closed)
        SELECT r->>0, r->>1, r->>2, r->>3, r->>4, (r->>5)::integer, (r->>6)::integer, (r->>7)::integer,
               (r->>8)::bigint, (r->>9)::bigint, (r->>10)::boolean
          FROM jsonb_array_elements(doc->'r') r
        ON CONFLICT (brand_id, provider_id, round_id, player_id) DO UPDATE SET
            bet_count = EXCLUDED.bet_count, open_bets = EXCLUDED.open_bets, live_bets = EXCLUDED.live_bets,
            bet_total = EXCLUDED.bet_total, win_total = EXCLUDED.win_total, closed = EXCLUDED.closed;
    END IF;

    IF jsonb_array_length(doc->'s') > 0 THEN
        INSERT INTO tombstones (brand_id, provider_id, tx_id, ledger_tx)
        SELECT r->>0, r->>1, r->>2, (r->>3)::bigint FROM jsonb_array_elements(doc->'s') r;
    END IF;

    IF jsonb_array_length(doc->'l') > 0 THEN
        INSERT INTO rg_limits (brand_id, player_id, currency, key, value, pending_value, pending_set,
                               pending_from_ms)
        SELECT r->>0, r->>1, r->>2, r->>3, (r->>4)::bigint, (r->>5)::bigint, (r->>6)::boolean, (r->>7)::bigint
          FROM jsonb_array_elements(doc->'l') r
        ON CONFLICT (brand_id, player_id, currency, key) DO UPDATE SET value = EXCLUDED.value,
            pending_value = EXCLUDED.pending_value, pending_set = EXCLUDED.pending_set,
            pending_from_ms = EXCLUDED.pending_from_ms;
    END IF;

    IF jsonb_array_length(doc->'u') > 0 THEN
        INSERT INTO rg_usage (brand_id, player_id, currency, day, staked, won)
        SELECT r->>0, r->>1, r->>2, (r->>3)::date, (r->>4)::numeric, (r->>5)::numeric
          FROM jsonb_array_elements(doc->'u') r
        ON CONFLICT (brand_id, player_id, currency, day) DO UPDATE SET
            staked = rg_usage.staked + EXCLUDED.staked, won = rg_usage.won + EXCLUDED.won;
    END IF;

    -- the payload is the event's JSON text exactly as the writer encoded it (sent as a JSON string)
    IF jsonb_array_length(doc->'o') > 0 THEN
        INSERT INTO outbox (event_id, subject, payload, batch_seq)
        SELECT r->>0, r->>1, convert_to(r->>2, 'UTF8'), p_batch_seq FROM jsonb_array_elements(doc->'o') r;
    END IF;

    INSERT INTO batches (batch_seq, prev_hash, digest, hash, tx_count)
    VALUES (p_batch_seq, p_prev_hash, p_digest, p_hash, jsonb_array_length(doc->'t'));

    -- wake this shard's outbox relay, wherever it runs (delivered at commit, dropped on rollback)
    IF jsonb_array_length(doc->'o') > 0 THEN
        PERFORM pg_notify('gw_outbox_' || current_schema(), '');
    END IF;
END $$;
