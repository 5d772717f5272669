"""`python -m relay` runs the `relay` command."""

from relay.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
