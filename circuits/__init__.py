"""seqlens.circuits (filled by later issues)."""
