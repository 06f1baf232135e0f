"""The support policy: the file's schema, its loader, per-ticket plans and the business calendar."""
