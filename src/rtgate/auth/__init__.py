"""Gateway keys and the credentials clients present."""
