"""`python -m lco_cli` (and `accelerate launch -m lco_cli ...`)."""
from lco_cli.cli import main

if __name__ == "__main__":
    main()
