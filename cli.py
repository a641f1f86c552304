"""``python cli.py ...`` runs the same click app as the ``edgekit`` console script."""

from edgekit.cli import main

if __name__ == "__main__":
    main()
