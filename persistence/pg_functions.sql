-- holdsvc's PostgreSQL functions: one call per operation, so the writer sends a whole group
-- of like operations in one pipelined round trip. Installed (CREATE OR REPLACE) by every
-- process at start-up, under the migration lock; the _v1 suffix changes when a signature or
-- a meaning does, so processes of two holdsvc versions sharing a database never call each
-- other's. Refusals are results, not errors, so one refused operation never aborts the group.

-- The compare-and-set of a booking's state: the row locked, moved only from a source.
CREATE OR REPLACE FUNCTION holdsvc_move_v1(
    p_id text, p_target text, p_sources text[], p_cause text, p_live boolean, p_at bigint,
    OUT o_moved boolean, OUT o_state text, OUT o_previous text, OUT o_deadline bigint)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT b.state, b.hold_expires_at INTO o_previous, o_deadline
        FROM bookings b WHERE b.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        o_moved := false;
        RETURN;
    END IF;
    IF NOT (o_previous = ANY (p_sources)) THEN
        o_moved := false; o_state := o_previous; o_previous := NULL; o_deadline := NULL;
        RETURN;
    END IF;
    UPDATE bookings SET state = p_target, updated_at = p_at WHERE id = p_id;
    INSERT INTO transitions (booking_id, from_state, to_state, cause, at)
        VALUES (p_id, o_previous, p_target, p_cause, p_at);
    IF NOT p_live THEN
        UPDATE booking_seats SET live = false WHERE booking_id = p_id;
    END IF;
    o_moved := true; o_state := p_target;
END $$;

-- A move with the payment change and new deadline that commit with it or not at all.
-- p_pay_expect NULL with a p_pay_status creates the payment. A payment not in p_pay_expect
-- undoes the move: o_pay_ok false, o_pay its status.
CREATE OR REPLACE FUNCTION holdsvc_transition_v1(
    p_id text, p_target text, p_sources text[], p_cause text, p_live boolean, p_at bigint,
    p_deadline bigint, p_pay_status text, p_pay_expect text[], p_pay_id text, p_method text,
    p_amount numeric, p_currency text, p_idem text,
    OUT o_moved boolean, OUT o_state text, OUT o_previous text, OUT o_deadline bigint,
    OUT o_pay_ok boolean, OUT o_pay text)
LANGUAGE plpgsql AS $$
BEGIN
    o_pay_ok := true;
    BEGIN
        SELECT m.o_moved, m.o_state, m.o_previous, m.o_deadline
            INTO o_moved, o_state, o_previous, o_deadline
            FROM holdsvc_move_v1(p_id, p_target, p_sources, p_cause, p_live, p_at) m;
        IF NOT o_moved THEN
            RETURN;
        END IF;
        IF p_pay_status IS NOT NULL AND p_pay_expect IS NULL THEN
            INSERT INTO payments (booking_id, payment_id, method, status, amount, currency,
                                  idem_key, updated_at)
                VALUES (p_id, p_pay_id, p_method, p_pay_status, p_amount, p_currency, p_idem,
                        p_at);
        ELSIF p_pay_status IS NOT NULL THEN
            UPDATE payments SET status = p_pay_status,
                                payment_id = COALESCE(p_pay_id, payment_id),
                                updated_at = p_at, refund_key = COALESCE(p_idem, refund_key)
                WHERE booking_id = p_id AND status = ANY (p_pay_expect);
            IF NOT FOUND THEN
                RAISE EXCEPTION 'payment changed' USING ERRCODE = 'HS001';
            END IF;
        END IF;
        IF p_deadline IS NOT NULL THEN
            UPDATE bookings SET hold_expires_at = p_deadline WHERE id = p_id;
        END IF;
    EXCEPTION WHEN SQLSTATE 'HS001' THEN
        o_pay_ok := false; o_moved := false; o_previous := NULL; o_deadline := NULL;
        SELECT b.state INTO o_state FROM bookings b WHERE b.id = p_id;
        SELECT p.status INTO o_pay FROM payments p WHERE p.booking_id = p_id;
    END;
END $$;

-- A booking enters SQL from its Redis hold, already moved (p_target): its row, seats,
-- history and the payment a pay starts. o_code 0 written; 1 already in SQL (o_state);
-- 2 a seat another booking owns (o_blocking, o_blocking_states), nothing written. A live
-- holder in a state of p_sup_sources is superseded first (o_superseded, with its previous
-- state and deadline).
CREATE OR REPLACE FUNCTION holdsvc_write_booking_v1(
    p_id text, p_flight bigint, p_user text, p_amount numeric, p_currency text,
    p_expires bigint, p_created bigint, p_owner text, p_seats text[],
    p_target text, p_cause text, p_live boolean,
    p_sup_target text, p_sup_sources text[], p_sup_cause text, p_sup_live boolean, p_at bigint,
    p_pay_status text, p_pay_id text, p_method text, p_pay_amount numeric, p_pay_currency text,
    p_idem text,
    OUT o_code integer, OUT o_state text, OUT o_superseded text[], OUT o_sup_previous text[],
    OUT o_sup_deadline bigint[], OUT o_blocking text[], OUT o_blocking_states text[])
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    m record;
    holders text[] := '{}';
BEGIN
    SELECT b.state INTO o_state FROM bookings b WHERE b.id = p_id;
    IF FOUND THEN
        o_code := 1;
        RETURN;
    END IF;
    o_superseded := '{}'; o_sup_previous := '{}'; o_sup_deadline := '{}';
    o_blocking := '{}'; o_blocking_states := '{}';
    BEGIN
        IF p_live THEN
            FOR r IN SELECT bs.booking_id AS bid, bk.state AS st FROM booking_seats bs
                     JOIN bookings bk ON bk.id = bs.booking_id
                     WHERE bs.flight_id = p_flight AND bs.live AND bs.seat = ANY (p_seats)
                     ORDER BY bs.booking_id FOR UPDATE OF bk LOOP
                IF r.bid = ANY (holders) OR r.bid = ANY (o_blocking) THEN
                    CONTINUE;
                END IF;
                IF r.st = ANY (p_sup_sources) THEN
                    holders := holders || r.bid;
                ELSE
                    o_blocking := o_blocking || r.bid;
                    o_blocking_states := o_blocking_states || r.st;
                END IF;
            END LOOP;
            IF cardinality(o_blocking) > 0 THEN
                o_code := 2;
                RETURN;
            END IF;
            FOR i IN 1 .. cardinality(holders) LOOP
                SELECT * INTO m FROM holdsvc_move_v1(holders[i], p_sup_target, p_sup_sources,
                                                     p_sup_cause, p_sup_live, p_at);
                IF m.o_moved THEN
                    o_superseded := o_superseded || holders[i];
                    o_sup_previous := o_sup_previous || m.o_previous;
                    o_sup_deadline := o_sup_deadline || m.o_deadline;
                END IF;
            END LOOP;
        END IF;
        INSERT INTO bookings (id, flight_id, user_id, state, amount, currency, hold_expires_at,
                              created_at, updated_at, owner)
            VALUES (p_id, p_flight, p_user, p_target, p_amount, p_currency, p_expires,
                    p_created, p_at, p_owner);
        INSERT INTO booking_seats (booking_id, pos, flight_id, seat, live)
            SELECT p_id, s.pos - 1, p_flight, s.seat, p_live
            FROM unnest(p_seats) WITH ORDINALITY AS s(seat, pos);
        INSERT INTO transitions (booking_id, from_state, to_state, cause, at)
            VALUES (p_id, 'INITIATED', 'SEAT_HELD', 'hold', p_created);
        IF p_target <> 'SEAT_HELD' THEN
            INSERT INTO transitions (booking_id, from_state, to_state, cause, at)
                VALUES (p_id, 'SEAT_HELD', p_target, p_cause, p_at);
        END IF;
        IF p_pay_status IS NOT NULL THEN
            INSERT INTO payments (booking_id, payment_id, method, status, amount, currency,
                                  idem_key, updated_at)
                VALUES (p_id, p_pay_id, p_method, p_pay_status, p_pay_amount, p_pay_currency,
                        p_idem, p_at);
        END IF;
        o_code := 0; o_state := p_target;
    EXCEPTION WHEN unique_violation THEN
        -- Another process wrote this booking, or took one of its seats for good, since the
        -- checks above: nothing of this one stays.
        o_superseded := '{}'; o_sup_previous := '{}'; o_sup_deadline := '{}';
        SELECT b.state INTO o_state FROM bookings b WHERE b.id = p_id;
        IF FOUND THEN
            o_code := 1;
        ELSE
            o_code := 2; o_blocking := ARRAY['(another process)'];
            o_blocking_states := ARRAY['live'];
        END IF;
    END;
END $$;
