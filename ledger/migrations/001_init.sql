-- Ledger schema of one shard (created inside the shard's own schema; search_path points at it).
-- Money is bigint minor units. Entries, transactions, tombstones, outbox and the batch chain are
-- append-only: the triggers at the end refuse UPDATE, DELETE and TRUNCATE on them.

CREATE TABLE accounts (
    account_id  bigserial PRIMARY KEY,
    kind        text   NOT NULL CHECK (kind IN ('player', 'house', 'cash')),
    tenant_id   text   NOT NULL,
    brand_id    text   NOT NULL,
    player_id   text   NOT NULL,          -- '' for house and cash accounts
    currency    char(3) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, brand_id, player_id, currency)
);

-- Materialised per-account balance; reconcile proves balance = sum(entries).
CREATE TABLE balances (
    account_id  bigint PRIMARY KEY REFERENCES accounts,
    is_player   boolean NOT NULL,
    balance     bigint NOT NULL DEFAULT 0,
    CONSTRAINT player_balance_never_negative CHECK (NOT is_player OR balance >= 0)
);

CREATE SEQUENCE ledger_tx_seq;

-- One row per command the ledger answered, refusals included, so a retry gets the same answer.
CREATE TABLE transactions (
    ledger_tx     bigint PRIMARY KEY,
    brand_id      text   NOT NULL,
    provider_id   text   NOT NULL,
    tx_id         text   NOT NULL,
    kind          text   NOT NULL,
    status        text   NOT NULL,
    request_hash  text   NOT NULL,
    tenant_id     text   NOT NULL,
    license       text   NOT NULL,
    player_id     text   NOT NULL,
    currency      char(3) NOT NULL,
    round_id      text   NOT NULL,
    ref_tx_id     text,
    amount        bigint NOT NULL CHECK (amount >= 0),
    credit_type   text   NOT NULL,
    batch_seq     bigint NOT NULL,
    traceparent   text   NOT NULL,
    cmd_id        text   NOT NULL,             -- the gateway's attempt id: tells redelivery from retry
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT one_outcome_per_provider_tx UNIQUE (brand_id, provider_id, tx_id)
);

CREATE TABLE entries (
    entry_id    bigserial PRIMARY KEY,
    ledger_tx   bigint NOT NULL REFERENCES transactions,
    account_id  bigint NOT NULL REFERENCES accounts,
    amount      bigint NOT NULL CHECK (amount <> 0),   -- signed: + credits the account
    batch_seq   bigint NOT NULL
);
-- No secondary indexes on entries: every batch appends thousands of rows, and only reconcile reads
-- them (full scans, grouped). Balances are read from the balances table, never summed live.

-- State of each bet, for settlement by reference (open -> settled | rolled_back).
CREATE TABLE bets (
    brand_id     text NOT NULL,
    provider_id  text NOT NULL,
    tx_id        text NOT NULL,
    round_id     text NOT NULL,
    player_id    text NOT NULL,
    currency     char(3) NOT NULL,
    amount       bigint NOT NULL,
    free_round   boolean NOT NULL,
    state        text NOT NULL CHECK (state IN ('open', 'settled', 'rolled_back')),
    ledger_tx    bigint NOT NULL,
    PRIMARY KEY (brand_id, provider_id, tx_id)
);

CREATE TABLE rounds (
    brand_id     text NOT NULL,
    provider_id  text NOT NULL,
    round_id     text NOT NULL,
    player_id    text NOT NULL,
    currency     char(3) NOT NULL,
    bet_count    integer NOT NULL DEFAULT 0,
    open_bets    integer NOT NULL DEFAULT 0,
    live_bets    integer NOT NULL DEFAULT 0,   -- bets not rolled back
    bet_total    bigint NOT NULL DEFAULT 0,
    win_total    bigint NOT NULL DEFAULT 0,
    closed       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (brand_id, provider_id, round_id)
);

-- A rollback of a transaction we never saw: the id is dead, a later bet with it is refused.
CREATE TABLE tombstones (
    brand_id     text NOT NULL,
    provider_id  text NOT NULL,
    tx_id        text NOT NULL,
    ledger_tx    bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (brand_id, provider_id, tx_id)
);

-- Responsible gaming: the limit in force and a pending looser value that takes effect later.
CREATE TABLE rg_limits (
    brand_id        text NOT NULL,
    player_id       text NOT NULL,
    key             text NOT NULL,
    value           bigint,                 -- NULL = no limit
    pending_value   bigint,
    pending_set     boolean NOT NULL DEFAULT false,
    pending_from_ms bigint,
    PRIMARY KEY (brand_id, player_id, key)
);

-- Stake and win per player and UTC day, for day/week/month loss limits.
CREATE TABLE rg_usage (
    brand_id   text NOT NULL,
    player_id  text NOT NULL,
    currency   char(3) NOT NULL,
    day        date NOT NULL,
    staked     bigint NOT NULL DEFAULT 0,
    won        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (brand_id, player_id, currency, day)
);

-- Transactional outbox: events leave only from here. One row per ledger transaction; its payload is a
-- JSON array of [event id, subject, event], each relayed with its event id as Nats-Msg-Id.
CREATE TABLE outbox (
    seq         bigserial PRIMARY KEY,
    event_id    text NOT NULL,              -- the ledger transaction whose events the row holds
    subject     text NOT NULL,
    payload     bytea NOT NULL,
    batch_seq   bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE outbox_cursor (
    id        integer PRIMARY KEY CHECK (id = 1),
    last_seq  bigint NOT NULL
);
INSERT INTO outbox_cursor VALUES (1, 0);

-- Hash chain over batches: hash = sha256(prev_hash || seq || digest of the batch's rows).
CREATE TABLE batches (
    batch_seq   bigint PRIMARY KEY,
    prev_hash   bytea NOT NULL,
    digest      bytea NOT NULL,
    hash        bytea NOT NULL,
    tx_count    integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER tombstones_append_only BEFORE UPDATE OR DELETE ON tombstones
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER outbox_append_only BEFORE UPDATE OR DELETE ON outbox
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER batches_append_only BEFORE UPDATE OR DELETE ON batches
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER batches_no_truncate BEFORE TRUNCATE ON batches
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
