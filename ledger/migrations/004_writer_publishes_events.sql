-- The writer publishes each batch's events itself, right after its commit; the outbox stays the
-- transactional record and the relay only recovers what the writer could not publish:
--
-- 1. gw_write_batch gains the writer's published watermark (the outbox cursor moves inside the next
--    batch's own statement, no round trip of its own) and returns the outbox seq it wrote, so the
--    writer knows what it published. It no longer NOTIFYs the relay at every commit (the relay polls
--    slowly for rows the cursor has not passed after a grace period).
-- 2. One outbox row per batch (the writer's choice, no schema change): a JSON array of
--    [event id, subject, event], as before, only longer; the relay reads rows of either shape.
-- 3. The relay (recovery only) reads rows past the cursor older than a grace period (created_at).
--
-- The 003 function (5 arguments) stays for a writer of the previous release during an upgrade.

CREATE FUNCTION gw_write_batch(p_batch_seq bigint, p_prev_hash bytea, p_digest bytea, p_hash bytea,
                               doc jsonb, p_published bigint, p_floor bigint)
RETURNS bigint LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
DECLARE
    last_outbox bigint := 0;
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

    -- the payload is the events' JSON text exactly as the writer encoded it (sent as a JSON string)
    IF jsonb_array_length(doc->'o') > 0 THEN
        WITH ins AS (
            INSERT INTO outbox (event_id, subject, payload, batch_seq)
            SELECT r->>0, r->>1, convert_to(r->>2, 'UTF8'), p_batch_seq FROM jsonb_array_elements(doc->'o') r
            RETURNING seq
        ) SELECT max(seq) INTO last_outbox FROM ins;
    END IF;

    -- the writer published every outbox row in (p_floor, p_published] itself: the cursor moves there, but
    -- only once it has reached p_floor (what came before is the relay's to recover) and never back
    IF p_published > 0 THEN
        UPDATE outbox_cursor SET last_seq = p_published
         WHERE id = 1 AND last_seq >= p_floor AND last_seq < p_published;
    END IF;

    INSERT INTO batches (batch_seq, prev_hash, digest, hash, tx_count)
    VALUES (p_batch_seq, p_prev_hash, p_digest, p_hash, jsonb_array_length(doc->'t'));

    RETURN coalesce(last_outbox, 0);
END $$;
