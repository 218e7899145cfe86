"""Texts the core sends that several test files check word for word."""

# After "the name NAME is taken", with the default --resume-grace of 120 s.
TAKEN_HINT = " (a user whose connection ended keeps the name for up to 120 s, to resume)"
