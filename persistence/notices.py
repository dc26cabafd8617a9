"""What every SQL store tells its observer (the app's logs and metrics) of committed moves."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from persistence.records import Move, Moved, NewBooking, State, Transition


class TransitionNotices:
    def __init__(self) -> None:
        # Told of every committed move; runs on the event loop.
        self.on_transition: Callable[[Transition], None] | None = None

    def _notify(self, booking_id: str, moved: Moved, move: Move, at: int) -> None:
        if self.on_transition is not None and moved.moved and moved.previous is not None:
            self.on_transition(
                Transition(booking_id, moved.previous, move.target, move.cause, at, moved.deadline)
            )

    def _notify_inserted(self, booking: NewBooking, moved: Moved, move: Move, at: int) -> None:
        """A booking written from its Redis hold: its hold, then its move."""
        if self.on_transition is not None and moved.moved:
            self.on_transition(
                Transition(
                    booking.id, State.INITIATED.value, State.SEAT_HELD.value, "hold",
                    booking.created_at, None,
                )
            )  # fmt: skip
            self._notify(booking.id, moved, move, at)

    def _notify_moves(
        self, outcomes: Sequence[tuple[str, Moved]], move: Move, at: int
    ) -> list[str]:
        """Tell of each committed move of a many-booking operation; returns those moved."""
        for bid, moved in outcomes:
            self._notify(bid, moved, move, at)
        return [bid for bid, moved in outcomes if moved.moved]

    def _notify_ended(
        self,
        outcomes: Sequence[tuple[str, Moved]],
        records: dict[str, NewBooking],
        move: Move,
        at: int,
    ) -> list[str]:
        """end_holds' outcomes: a booking written from its record tells of its hold too."""
        for bid, moved in outcomes:
            if bid in records and moved.previous == State.SEAT_HELD.value:
                self._notify_inserted(records[bid], moved, move, at)
            else:
                self._notify(bid, moved, move, at)
        return [bid for bid, moved in outcomes if moved.moved]
