"""Small shared helpers: atomic file io, hashing, seeding."""
