"""The former name of :mod:`seqlens.studies.zoo_circuits` (kept so that old commands still run)."""

from seqlens.studies.zoo_circuits import main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
