"""Every SQL statement of the projector: the projection (`writes` for what every kind shares, `facts`,
`sends`, `deliveries`), the read API and operator reports (`reads`), replay and checksums (`schemas`)."""
