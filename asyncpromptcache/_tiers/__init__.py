"""The shared tiers behind the caches (private)."""
