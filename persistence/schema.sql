-- holdsvc SQL schema. Times are Unix milliseconds; money is a decimal string, never a float.
CREATE TABLE IF NOT EXISTS flights (
    id              INTEGER PRIMARY KEY,
    flight_number   TEXT NOT NULL,
    origin          TEXT NOT NULL,
    destination     TEXT NOT NULL,
    departure_time  TEXT NOT NULL,
    seat_rows       INTEGER NOT NULL,
    seat_letters    TEXT NOT NULL,
    price           TEXT NOT NULL,
    currency        TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS flights_by_number ON flights (flight_number, departure_time);

CREATE TABLE IF NOT EXISTS bookings (
    id               TEXT PRIMARY KEY,
    flight_id        INTEGER NOT NULL REFERENCES flights (id),
    user_id          TEXT NOT NULL,
    state            TEXT NOT NULL,
    amount           TEXT NOT NULL,
    currency         TEXT NOT NULL,
    hold_expires_at  INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bookings_by_state ON bookings (state, hold_expires_at);

-- live = 1 while the booking holds or owns the seat (SEAT_HELD, PAYMENT_PENDING, CONFIRMED).
CREATE TABLE IF NOT EXISTS booking_seats (
    booking_id  TEXT NOT NULL REFERENCES bookings (id),
    pos         INTEGER NOT NULL,
    flight_id   INTEGER NOT NULL,
    seat        TEXT NOT NULL,
    live        INTEGER NOT NULL,
    PRIMARY KEY (booking_id, pos)
) WITHOUT ROWID;
-- The SQL fence: two live bookings of one seat cannot both be written, whatever Redis said.
CREATE UNIQUE INDEX IF NOT EXISTS one_live_booking_per_seat
    ON booking_seats (flight_id, seat) WHERE live = 1;

-- Append-only history: one row per move.
CREATE TABLE IF NOT EXISTS transitions (
    id          INTEGER PRIMARY KEY,
    booking_id  TEXT NOT NULL REFERENCES bookings (id),
    from_state  TEXT NOT NULL,
    to_state    TEXT NOT NULL,
    cause       TEXT NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_by_booking ON transitions (booking_id, id);

-- status: pending (charge under way), captured, failed, refunding (refund under way), refunded.
CREATE TABLE IF NOT EXISTS payments (
    booking_id  TEXT PRIMARY KEY REFERENCES bookings (id),
    payment_id  TEXT,
    method      TEXT NOT NULL,
    status      TEXT NOT NULL,
    amount      TEXT NOT NULL,
    currency    TEXT NOT NULL,
    -- The Idempotency-Key of the pay request that started it: a retry of that request after
    -- a crash is recognised as the same payment.
    idem_key    TEXT,
    updated_at  INTEGER NOT NULL,
    -- The Idempotency-Key of the refund request that claimed the refund, likewise.
    refund_key  TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS payments_by_status ON payments (status, updated_at);

-- status NULL: the first request with this key is still running.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key          TEXT PRIMARY KEY,
    fingerprint  BLOB NOT NULL,
    status       INTEGER,
    body         BLOB,
    started_at   INTEGER NOT NULL,
    owner        TEXT NOT NULL,
    -- Renewed by the claiming process while the request runs: "in progress" means fresh.
    alive_at     INTEGER,
    -- An answer stored in the same commit as its effect: the outcome, and the record as that
    -- commit left it (JSON); status and body stay NULL.
    outcome      TEXT,
    record       BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency_keys (started_at);

