"""The domain: the booking and payment state machines and the order of each action's steps."""
