"""seqlens.app (filled by later issues)."""
