"""The node tier (a package, so its test modules do not clash by name with the other tiers')."""
