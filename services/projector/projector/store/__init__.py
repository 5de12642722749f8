"""Every SQL statement of the projector: `writes` (the projection), `reads` (the read API and operator
reports), `schemas` (rebuild into a fresh schema, the atomic swap, checksums)."""
