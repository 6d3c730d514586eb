"""`speckit eval`: acceptance (tau) and speed of a draft against target-only decoding."""
