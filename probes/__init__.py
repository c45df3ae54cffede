"""seqlens.probes (filled by later issues)."""
