"""Chat bridges: one node per platform, translating platform events to hub runs."""
