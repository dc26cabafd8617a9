"""holdsvc: seat holds in Redis, bookings durable in SQL."""
