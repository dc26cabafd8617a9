"""What every SQL store tells its observer (the app's logs and metrics) of committed moves."""

from __future__ import annotations

from collections.abc import Callable

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
