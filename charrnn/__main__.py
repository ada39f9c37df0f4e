"""`python -m charrnn`."""

from charrnn.cli import main

main()
