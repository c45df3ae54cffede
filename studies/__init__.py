"""seqlens.studies (filled by later issues)."""
